"""Enforcement documents (on-site records, sampling records, decisions, delivery receipts) as PDF/A-3b.

``templates`` (one JSON data file per kind) say what a kind contains; ``form`` checks what was filled in;
``sources`` looks up the evidence a document cites and the signing session it carries; ``render`` writes the
PDF/A-3b; ``seal`` is the seam where the agency seal is applied. ``egw record`` (gateway/commands/record.py)
stores the result as evidence. The format is documented in docs/formats/document.md.
"""
