"""Name vocabularies by naming tradition, drawn once per seed from Faker locales.

Faker supplies the vocabularies (a few thousand draws per locale, so common
names recur as often as the locale weights them); rows index into them with
numpy. Non-Latin locales are not used directly: Chinese names come from
zh_CN's romanised (pinyin) methods plus a pinyin syllable list, Arab names
from a small built-in romanised list.
"""
from __future__ import annotations

import functools
import unicodedata

import numpy as np
from faker import Faker

ORIGINS = ["WB", "EUR", "IND", "PAK", "BAN", "CHN", "OASIAN", "AFR", "CAR", "ARAB"]

_ARAB_M = ("Mohammed Ahmed Ali Omar Khalid Yousef Hassan Hussein Ibrahim Mahmoud Abdullah Tariq "
           "Karim Samir Nabil Walid Faisal Hamza Bilal Zaid Rami Saif Adel Majid Nasser Fadi Amr "
           "Mustafa Osama Jamal Ayman Salim Anas Bassam Hisham Ziad Marwan").split()
_ARAB_F = ("Fatima Aisha Maryam Noor Layla Huda Rania Yasmin Lina Salma Sara Dina Hana Amira Reem "
           "Zainab Nadia Rasha Samira Leila Mona Heba Asma Ruba Farah Jana Dalia Nour Hiba").split()
_ARAB_L = ("Al Hassan|Al Sayed|El Masri|Haddad|Khalil|Mansour|Nasser|Saleh|Hamdan|Abboud|Al Amin|"
           "Qureshi|Farouk|Ibrahim|Mahmoud|Youssef|Al Rashid|Bakr|Darwish|Suleiman|Aziz|Hijazi|"
           "El Khoury|Abdallah|Salem|Shaheen|Al Zahrani|Othman|Hamed|Barakat|Najjar|Karam").split("|")
_BAN_L = ("Rahman|Uddin|Hossain|Islam|Begum|Miah|Chowdhury|Ahmed|Khatun|Ali|Hoque|Alam|Sarkar|"
          "Karim|Akter|Sultana|Haque|Ullah|Mahmud|Siddique|Talukder|Bhuiyan|Das|Roy").split("|")
_PINYIN = ("xiao ming wei jing li hua yan hong jun lei bo yu hao jie qing yi zhi xin yun fang lin "
           "mei ling tian zhen chen rui kai ting yang hui jia qian xuan hao han shu wen zi").split()
_WB_EXTRA_L = ("Smith-Jones|Wallace-Hadrill|Lloyd-Evans|Fox-Taylor|Price-Davies|Bowes-Lyon|"
               "Hughes-Morgan|Clarke-Williams").split("|")
# nicknames / short forms recorded as preferred names (cf. [S104])
NICKNAMES = {
    "Christopher": "Chris", "William": "Will", "Robert": "Rob", "Thomas": "Tom", "James": "Jim",
    "Michael": "Mike", "Daniel": "Dan", "Matthew": "Matt", "Alexander": "Alex", "Benjamin": "Ben",
    "Samuel": "Sam", "Joseph": "Joe", "Edward": "Ed", "Jonathan": "Jon", "Nicholas": "Nick",
    "Andrew": "Andy", "Anthony": "Tony", "Richard": "Rich", "Timothy": "Tim", "Stephen": "Steve",
    "David": "Dave", "Peter": "Pete", "Elizabeth": "Liz", "Katherine": "Kate", "Catherine": "Cath",
    "Rebecca": "Becky", "Victoria": "Vicky", "Jennifer": "Jen", "Alexandra": "Alex",
    "Samantha": "Sam", "Charlotte": "Lottie", "Margaret": "Maggie", "Eleanor": "Ellie",
    "Abigail": "Abi", "Jessica": "Jess", "Natalie": "Nat", "Stephanie": "Steph", "Deborah": "Debbie",
    "Olivia": "Liv", "Christine": "Chris", "Philip": "Phil", "Gregory": "Greg", "Zachary": "Zach",
    "Abdullah": "Abdul", "Mohammed": "Mo", "Muhammad": "Mo", "Oluwaseun": "Seun",
    "Oluwatobi": "Tobi", "Chukwuemeka": "Emeka", "Olufunmilayo": "Funmi", "Venkatesh": "Venky",
}
ENGLISH_GIVEN_M = ("Jack Kevin Tony Eric Jason Vincent Alan Ryan Leo Henry Oscar Max Sam Ben Jerry "
                   "Andy Justin Ken Raymond Tim").split()
ENGLISH_GIVEN_F = ("Amy Grace Lily Vivian Cindy Emily Jenny Angela Joyce Fiona Helen Iris Jasmine "
                   "Kelly Lucy Nancy Sophie Tina Wendy Yvonne").split()
# transliteration variants: any member may be rendered as any other
_TRANSLIT_SETS = [
    "Mohammed Muhammad Mohamed Mohammad Muhammed", "Ahmed Ahmad Ahmet", "Hussain Husain Hussein Hossain",
    "Chaudhry Choudhury Chowdhury Chaudhary", "Rahman Rehman", "Yusuf Yousuf Yousef Youssef",
    "Abdul Abdal", "Mahmoud Mahmood Mahmud", "Qureshi Kureshi Qureishi", "Siddiqui Siddique Siddiqi",
    "Fatima Fatimah Fatma", "Aisha Ayesha Aysha", "Zainab Zeinab Zaynab", "Osama Usama",
    "Mustafa Mustapha Mostafa", "Khalid Khaled", "Hassan Hasan", "Karim Kareem", "Nasser Nasir Naser",
    "Abdullah Abdallah", "Uddin Udin Ud-Din", "Islam Eslam", "Begum Begom", "Ali Aly",
    "Olusegun Olushegun", "Oluwaseun Oluseun", "Chukwu Chuku", "Nwosu Nwoshu",
    "Xiao Hsiao", "Zhang Chang", "Chen Chan", "Wang Wong", "Liu Lau", "Huang Wong", "Zhou Chow",
    "Wu Ng", "Li Lee", "Lin Lam", "Singh Sing", "Kaur Kour", "Sharma Sarma", "Patel Patil",
    "Shah Sha", "Mehta Mehata", "Gupta Gupt", "Reddy Reddi", "Krishnan Krishna",
]
TRANSLIT: dict[str, list[str]] = {}
for _s in _TRANSLIT_SETS:
    _w = _s.split()
    for _x in _w:
        TRANSLIT.setdefault(_x, []).extend(v for v in _w if v != _x)


def ascii_fold(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")


def _draw(fk: Faker, meth: str, n: int) -> list[str]:
    f = getattr(fk, meth)
    return [f() for _ in range(n)]


def _locale_vocab(locale: str, seed: int, n: int) -> tuple[list, list, list]:
    fk = Faker(locale)
    fk.seed_instance(seed)
    return (_draw(fk, "first_name_male", n), _draw(fk, "first_name_female", n),
            _draw(fk, "last_name", n))


@functools.lru_cache(maxsize=8)
def vocabularies(seed: int, n: int = 2000) -> dict[str, dict[str, np.ndarray]]:
    """{origin: {"m": forenames, "f": forenames, "l": surnames, "m_raw"...}} as numpy str arrays.

    Draws are ASCII-folded (the `*_raw` arrays keep diacritics for the few
    records that carry them)."""
    rng = np.random.default_rng([seed, 77])
    s = lambda k: int(seed * 1000 + k) % (2**31)  # noqa: E731
    V: dict[str, dict[str, list]] = {}

    def put(origin, m, f, l):
        V[origin] = {"m": m, "f": f, "l": l}

    put("WB", *_locale_vocab("en_GB", s(1), n))
    V["WB"]["l"] += list(rng.choice(_WB_EXTRA_L, n // 100))        # ~1% double-barrelled
    ie = _locale_vocab("en_IE", s(2), n // 4)
    V["WB"]["l"] += ie[2][: n // 6]
    eur = [_locale_vocab(loc, s(3 + i), n // 5) for i, loc in enumerate(["pl_PL", "it_IT", "fr_FR", "de_DE", "pt_PT"])]
    put("EUR", *[sum((e[k] for e in eur), []) for k in range(3)])
    put("IND", *_locale_vocab("en_IN", s(10), n))
    pk = _locale_vocab("en_PK", s(11), n)
    # Pakistani names: Faker en_PK plus common transliterated names (PK surnames are heavily concentrated)
    common_m = ["Muhammad", "Mohammed", "Ahmed", "Ali", "Hassan", "Usman", "Bilal", "Hamza", "Imran", "Zain"]
    common_l = ["Khan", "Ahmed", "Hussain", "Ali", "Iqbal", "Akhtar", "Shah", "Malik", "Butt", "Qureshi",
                "Chaudhry", "Raza", "Rashid", "Mahmood", "Javed", "Anwar", "Siddiqui", "Bashir"]
    put("PAK", pk[0] + common_m * (n // 50), pk[1], pk[2] + common_l * (n // 30))
    put("BAN", pk[0] + common_m * (n // 50), pk[1], _BAN_L * (n // 20))
    zf = Faker("zh_CN")
    zf.seed_instance(s(12))
    single = [zf.first_romanized_name() for _ in range(n // 3)]
    a = rng.choice(_PINYIN, n)
    b = rng.choice(_PINYIN, n)
    double = [(x + y).capitalize() for x, y in zip(a, b)]
    chn_first = single + double
    put("CHN", chn_first, chn_first[::-1], [zf.last_romanized_name() for _ in range(n)])
    vi = _locale_vocab("vi_VN", s(13), n // 3)
    ind2 = _locale_vocab("en_IN", s(14), n // 3)
    put("OASIAN", vi[0] + ind2[0], vi[1] + ind2[1], vi[2] + ind2[2])
    afr = [_locale_vocab(loc, s(20 + i), n // 4) for i, loc in enumerate(["yo_NG", "ig_NG", "en_NG", "tw_GH"])]
    put("AFR", *[sum((e[k] for e in afr), []) for k in range(3)])
    us = _locale_vocab("en_US", s(30), n // 2)
    gb2 = _locale_vocab("en_GB", s(31), n // 2)
    car_l = ["Campbell", "Brown", "Williams", "Thompson", "Clarke", "Francis", "Grant", "Robinson",
             "Henry", "Bailey", "Reid", "Edwards", "Samuels", "Gordon", "Powell", "Lewis"] * (n // 40)
    put("CAR", us[0] + gb2[0], us[1] + gb2[1], gb2[2] + car_l)
    put("ARAB", _ARAB_M * (n // 40), _ARAB_F * (n // 40), _ARAB_L * (n // 40))

    out: dict[str, dict[str, np.ndarray]] = {}
    for o, d in V.items():
        out[o] = {}
        for k, v in d.items():
            raw = np.array([str(x).strip() for x in v], dtype=object)
            fold = np.array([ascii_fold(x) or "X" for x in raw], dtype=object)
            out[o][k] = fold
            out[o][k + "_raw"] = raw
    return out
