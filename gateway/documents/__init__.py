"""Documents the station produces for people: the on-site record as PDF/A, its electronic seal, their verification."""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# pyHanko imports cryptography's DSA module at load time, which warns on every `egw verify FILE.pdf`; no egw key is DSA.
warnings.filterwarnings("ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning)
