"""Documents the station produces for people: the on-site record as PDF/A, its electronic seal, their verification."""
