"""Calibration targets and the error model of the synthetic delivery generator.

Every number here is either cited to `research/domain.md` by its [S#] tag or
marked [assumption]; docs/synthetic-data.md lists them beside the observed
values. Nothing in this module draws random numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# --- cohorts -----------------------------------------------------------------
FIRST_COHORT = 2007
LAST_COHORT = 2025
SNAPSHOT_YEAR = 2025            # extracts are "as at" 30 Sep 2025
ENTRANTS_PER_YEAR = 8000        # ~7,800 UK entrants c.2017 [S2]; England 7.6-8.5k 2020-24 [S77]
# relative intake by entry year: cap lifted 2020-21 [S77], rise 2018 [S76]
COHORT_WEIGHT = {y: 1.0 for y in range(FIRST_COHORT, LAST_COHORT + 1)}
COHORT_WEIGHT.update({2018: 1.08, 2019: 1.08, 2020: 1.18, 2021: 1.18, 2022: 1.06,
                      2023: 1.08, 2024: 1.1, 2025: 1.06})

# --- composition of entrants (UKMED 2012-14, n=16,020) [S23] ------------------
IMD_SHARES = [0.071, 0.119, 0.176, 0.248, 0.386]          # Q1 (most deprived) .. Q5 [S23]
IMD_Q1_WHITE = 0.035                                      # [S23]
IMD_Q1_BAME = 0.151                                       # [S23]
MALE_SHARE = 0.436                                        # [S23]
# group9 shares among known ethnicity [S23]
ETHNICITY9_SHARES = {
    "White": 0.691, "Indian": 0.102, "Pakistani": 0.048, "Mixed": 0.042,
    "Other Asian": 0.039, "Black": 0.029, "Other": 0.022, "Chinese": 0.016,
    "Bangladeshi": 0.011,
}
ETHNICITY_UNKNOWN_SHARE = 0.02                            # [assumption] refused / not known
# HESA 2-digit codes within each group9 [assumption on the split; codes S30]
ETHNICITY_CODES = {
    "White": {"10": 0.86, "13": 0.04, "14": 0.002, "15": 0.003, "19": 0.095},
    "Black": {"22": 0.74, "21": 0.21, "29": 0.05},
    "Mixed": {"41": 0.22, "42": 0.15, "43": 0.43, "49": 0.20},
    "Other": {"50": 0.45, "80": 0.55},
    "Indian": {"31": 1.0}, "Pakistani": {"32": 1.0}, "Bangladeshi": {"33": 1.0},
    "Chinese": {"34": 1.0}, "Other Asian": {"39": 1.0},
}
# deprivation tilt within BAME (log-odds per quintile step toward Q1) [assumption]
IMD_TILT = {"Pakistani": 0.45, "Bangladeshi": 0.55, "Black": 0.40, "Mixed": 0.10,
            "Other": 0.20, "Indian": -0.15, "Chinese": -0.20, "Other Asian": 0.05}
INDEPENDENT_SHARE = 0.266     # accepted applicants 2009-12 [S39]; 2012-13 29% [S20]
GRAMMAR_SHARE = 0.243         # [S39]
# remaining state/other split of school type [S39] (comp/FE/SFC 46.0) + [assumption] other/unknown
SCHOOL_OTHER_SPLIT = {"comprehensive": 0.330, "sixth_form_college": 0.100, "fe_college": 0.030,
                      "other": 0.014, "unknown": 0.017}
NSSEC_SHARES = {"01": 0.46, "02": 0.30, "03": 0.07, "04": 0.04, "05": 0.015, "06": 0.025,
                "07": 0.015, "08": 0.005, "09": 0.07}     # NS-SEC 1-2 ~76-80% [S39][S83]; lower 5% [S83]
PARED_SHARES = {"01": 0.66, "02": 0.19, "97": 0.07, "98": 0.03, "99": 0.05}  # missing ~15% [S44]
FSM_SHARES = {"Y": 0.07, "N": 0.93, "DK": 0.03}   # Y/N of those answering; DK of all           # [assumption]; asked from 2023 entry [S40]
FSM_FROM_CYCLE = 2023                                     # [S40]
COURSE_SHARES = {"SEM": 0.871, "GEP": 0.117, "EMDP": 0.012}  # [S23]
DOMICILE_SHARES = {"England": 0.83, "Scotland": 0.09, "Wales": 0.045, "NI": 0.035}  # [assumption]

# --- applicant pool beyond entrants --------------------------------------------
UNPLACED_PER_ENTRANT = 0.6    # never-placed applicants per entrant [assumption; real ~2:1, S9, scaled down]
REAPPLICANT_SHARE = 0.17      # entrants with earlier unplaced cycles; 14-19% of applicants [S9][S78]
P_SECOND_REAPPLY = 0.2        # of reapplicants, share with two earlier cycles [assumption]
P_NEW_UCAS_ID_ON_REAPPLY = 0.5  # new UCAS account per cycle [S9]; persistence unconfirmed
P_WITHDRAWN_APPLICATION = 0.04  # [assumption]
# applicants (all, 2009-12) are more deprived than acceptances [S39]: IMD of the unplaced pool
UNPLACED_IMD_SHARES = [0.145, 0.150, 0.175, 0.190, 0.340]   # [derived from S39 applicants vs accepted]
UNPLACED_INDEPENDENT_SHARE = 0.23                            # [derived from S39]
UNPLACED_WHITE_SHARE = 0.60                                  # [assumption]

# --- medical school ------------------------------------------------------------
P_NOT_GRADUATE = 0.055        # 6% failed to graduate, 4% in years 1-2 [S79]
P_INTERCALATE = 0.25          # SEM students taking a 6th year [assumption]
COURSE_YEARS = {"SEM": 5, "GEP": 4, "EMDP": 6}

# --- Foundation Programme [S54][S56][S57] ---------------------------------------
PIA_FROM_FP = 2024            # SJT/EPM no longer used [S57]
SJT_MEAN, SJT_SD, SJT_MAX = 40.0, 3.5, 50.0               # [assumption, domain.md 1.6]
# ethnic awarding gap in UKFP z vs White [S23]: Pakistani -0.53, Mixed -0.15 confirmed;
# the rest are [assumption] within the published 0 to -0.83 SD range [S23]
AWARDING_GAP = {"White": 0.0, "Mixed": -0.15, "Pakistani": -0.53, "Bangladeshi": -0.50,
                "Indian": -0.30, "Chinese": -0.20, "Other Asian": -0.40, "Black": -0.60,
                "Other": -0.40, "Unknown": -0.10}
# the gap is planted on latent ability; the recorded total measures ability with noise
# (corr ~0.88), so the latent gap is scaled up to make the *observed* z gap hit [S23] [derived]
AWARDING_GAP_SCALE = 1.14
UKFP_POINT_SD = 5.9           # IQR 76.9-84.85 [S24] -> SD ~ 8/1.35 [derived]
FOUNDATION_SCHOOLS = [
    "East Anglia", "Essex Bedfordshire and Hertfordshire", "Kent Surrey and Sussex",
    "Leicestershire Northamptonshire and Rutland", "London", "North West of England", "Northern",
    "Northern Ireland", "Oxford", "Peninsula", "Scotland", "Severn", "Trent", "Wales", "Wessex",
    "West Midlands Central", "West Midlands North", "West Midlands South", "Yorkshire and Humber",
    "North West Thames",
]                              # 19-20 foundation schools [S61][S62]
ARCP_F1 = {"1": 0.945, "3": 0.02, "4": 0.002, "5": 0.01, "8": 0.003, "N": 0.02}  # [assumption; codes S63-S66]
ARCP_F2 = {"6": 0.935, "3": 0.02, "4": 0.002, "5": 0.015, "8": 0.008, "N": 0.02}

# --- specialty destination: multinomial logit vs GP (Kumwenda 2019, Model 1) [S24][S25]
SPECIALTY_GROUPS = ["GP", "Medical", "Surgical", "Anaesthesia/EM", "O&G/Paediatrics",
                    "Mental health", "Diagnostics", "Other"]
# baseline shares of accepted level-1 offers 2013-14 (Kumwenda Table 1, n=6,065) [S24]
GROUP_SHARES = {"GP": 0.386, "Medical": 0.224, "Surgical": 0.099, "Anaesthesia/EM": 0.127,
                "O&G/Paediatrics": 0.096, "Mental health": 0.043, "Diagnostics": 0.020,
                "Other": 0.005}   # Diagnostics ~2.5% [derived]; 0.5% moved to Other (CSRH) [assumption]
# odds ratios vs GP: UKFP point, male, state school, no parental degree, non-white, school leaver
KUMWENDA_OR = {
    "Surgical":        (1.08, 4.11, 0.57, 0.80, 1.22, 1.31),
    "Medical":         (1.07, 1.85, 0.78, 0.65, 0.90, 1.82),
    "Anaesthesia/EM":  (1.05, 2.31, 0.85, 0.60, 0.49, 0.92),
    "Diagnostics":     (1.07, 2.16, 0.66, 0.59, 1.18, 1.12),
    "Mental health":   (0.98, 1.74, 0.61, 0.78, 0.43, 0.65),
    "O&G/Paediatrics": (1.06, 0.56, 0.92, 0.85, 0.52, 2.73),
    "Other":           (1.00, 1.00, 1.00, 1.00, 1.00, 1.00),   # [assumption]
}
TRUE_OR_INDEPENDENT_SURGERY_VS_GP = 1.0 / 0.57   # exact generator coefficient (≈1.754)
# specialties within a group, weighted by 2017 posts [S67]
SPECIALTY_WITHIN_GROUP = {
    "GP": {"GP": 1.0},
    "Medical": {"CMT": 0.97, "DERM": 0.03},          # CMT becomes IMT from 2019 [S69]
    "Surgical": {"CST": 0.83, "OPH": 0.10, "NSG": 0.04, "OMFS": 0.01, "CTS": 0.02},
    "Anaesthesia/EM": {"ANA": 0.64, "ACCSEM": 0.36},
    "O&G/Paediatrics": {"PAED": 0.62, "OG": 0.38},
    "Mental health": {"CPSY": 0.97, "CAMHS": 0.03},
    "Diagnostics": {"RAD": 0.74, "HIST": 0.26},
    "Other": {"CSRH": 1.0},
}
APPS_PER_APPLICANT_YEAR = 2.34   # 59,698 applications / 25,496 applicants 2024 [S116][S29]
P_FAILED_FIRST_YEAR = 0.20       # applicants with an unsuccessful earlier round [assumption]
P_NEVER_APPLY = 0.07             # not back in UK training within 5 years [S59]
# share applying straight after F2, by F2 completion year: 37.5% (2018) -> 22.4% (2023)
# in training within 12 months [S80]; 47.1% did not apply straight after FP (2013-14) [S24]
P_DIRECT = {2009: 0.55, 2015: 0.50, 2018: 0.40, 2023: 0.26, 2030: 0.26}
TRAINING_YEARS = {"GP": 3, "Medical": 7, "Surgical": 8, "Anaesthesia/EM": 7,
                  "O&G/Paediatrics": 7, "Mental health": 6, "Diagnostics": 5, "Other": 6}
SLOWDOWN = 1.2                   # 5.5 y for 5 nominal, 9 for 7 [S59]
TRAINING_REGIONS = ["London", "Kent Surrey and Sussex", "Thames Valley", "Wessex", "South West",
                    "East of England", "West Midlands", "East Midlands", "North West",
                    "Yorkshire and the Humber", "North East", "Scotland", "Wales", "Northern Ireland"]


def p_direct(f2_year: float) -> float:
    ks = sorted(P_DIRECT)
    for a, b in zip(ks, ks[1:]):
        if f2_year <= b:
            t = (max(f2_year, a) - a) / (b - a)
            return P_DIRECT[a] + t * (P_DIRECT[b] - P_DIRECT[a])
    return P_DIRECT[ks[-1]]


# --- error model (domain.md §3.2) ------------------------------------------------
@dataclass(frozen=True)
class ErrorModel:
    """Rates of life-course changes and recording errors, per record unless stated.

    Defaults follow research/domain.md §3.2; change any of them to stress a linker.
    """
    # marriage (true change, not an error) [S108][S109-S114]
    p_ever_marry: float = 0.80                 # [assumption]
    marriage_age_female: float = 32.3          # median age at marriage 2019 [S108]
    marriage_age_male: float = 34.3            # [S108]
    marriage_age_sd: float = 4.0               # [assumption]
    p_female_take_spouse: float = 0.55         # §3.2 default for doctors
    p_female_double_barrel: float = 0.07       # [S114]
    p_male_change: float = 0.02                # §3.2
    # name-format variation (preferred/anglicised, transliteration, order swap, split/join)
    name_format_base: float = 0.02             # [assumption] §3.2
    ethnic_multiplier: dict = field(default_factory=lambda: {
        "White": 1.0, "Mixed": 1.3, "Black African": 1.8, "Black Caribbean": 1.5,
        "Black other": 1.5, "Pakistani": 2.5, "Bangladeshi": 2.5, "Arab": 2.5,
        "Indian": 1.8, "Other Asian": 1.8, "Chinese": 3.0, "Other": 1.5, "Unknown": 1.0})
    # preferred names
    p_preferred_name_anglo: float = 0.10       # nickname recorded when one exists [assumption]
    p_english_name_chinese: float = 0.50       # [S115]
    p_register_uses_preferred: float = 0.30    # [assumption]
    # keying errors [S42][S103]
    forename_typo: float = 0.009
    surname_typo: float = 0.005
    dob_error: float = 0.004
    sex_error: float = 0.002
    # identifiers
    ucas_missing_training: float = 0.02        # 97-99% carry UCASPERID [S6]
    ucas_hyphenated: float = 0.05              # §3.2
    ucas_leading_zeros_lost: float = 0.01      # §3.2 [assumption]
    gmc_present_training: float = 0.30         # DHREGREF sparse, default 99999999 [S15]
    gmc_present_registration: float = 0.95     # [S28]
    gmc_typo: float = 0.003                    # §3.2
    gmc_transposition: float = 0.002           # §3.2
    # postcodes
    p_postcode_same_adm_train: float = 0.9     # §3.2
    p_postcode_same_later: float = 0.1         # §3.2

    def multiplier(self, group: str) -> float:
        return float(self.ethnic_multiplier.get(group, 1.0))


LOGIT = lambda p: math.log(p / (1 - p))  # noqa: E731
