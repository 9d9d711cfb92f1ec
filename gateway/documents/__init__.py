"""Documents the station produces for people: enforcement documents as PDF/A-3b, their electronic seal, their verification.

``templates`` (one JSON data file per kind) say what a kind contains; ``form`` checks what was filled in;
``sources`` looks up the evidence a document cites and the signing session it carries; ``render`` writes the
PDF/A-3b; ``approvals`` adds the party's and the officer's signatures (made by the station, binding the
handwriting record and the officer id); ``sealer`` is the seam where a seal is applied and ``seal`` the PAdES
seal itself (agency seal from the platform's sealing service, or provisional with the gateway's key);
``verify_pdf`` checks sealed documents offline, ``verify_embedded`` what they embed against the approvals. ``egw record`` (gateway/commands/record.py) stores the result as evidence. Formats:
docs/formats/document.md, docs/documents-sealing.md.
"""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# pyHanko imports cryptography's DSA module at load time, which warns on every `egw verify FILE.pdf`; no egw key is DSA.
warnings.filterwarnings("ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning)
