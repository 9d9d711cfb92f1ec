"""How each simulator is driven while it runs: the ``--help`` epilog of ``egw simulate KIND``.

One text per simulator, kept here so the help, ``docs/simulators.md`` and the tests
(``tests/test_cli_no_traceback.py`` checks both mention every stdin command) say the same thing.
"""

from __future__ import annotations

__all__ = ["BODYCAM_STDIN", "EPILOGS"]

# verb -> what it does; the bodycam simulator reads these from stdin, one per line.
BODYCAM_STDIN: dict[str, str] = {
    "unplug BUSID": "yank the recorder: its volume is truncated and disappears, the USB device goes away",
    "replug BUSID": "plug it back in (a new USB attachment)",
    "eject BUSID": "the recorder ends mass storage itself (a clean eject)",
    "record BUSID [N]": "N new recordings (default 1) for the next dock; refused while the volume is mounted",
    "halt BUSID EP": "one clearable stall on endpoint EP (e.g. 0x81)",
    "quit": "stop the simulator (as SIGTERM does)",
}

_OUTPUT = "stdout: the first line is the endpoint to connect to (flushed at once); progress goes to stderr."

EPILOGS: dict[str, str] = {
    "bodycam": (
        "while it runs:\n  stdin, one command per line (answered `ok VERB BUSID` or `error …` on stdout):\n"
        + "\n".join(f"    {verb:<18} {text}" for verb, text in BODYCAM_STDIN.items())
        + "\n  EOF on stdin only ends control; SIGTERM or SIGINT stop it cleanly.\n"
        "  stdout: `usbip://HOST:PORT` first, then one line per recorder, then events (`mounted BUSID SERIAL DIR`)."
    ),
    "fingerprint": (
        "while it runs:\n  SIGUSR1 presses the finger, SIGUSR2 lifts it (kill -USR1 PID); SIGTERM or SIGINT stop it.\n"
        "  No stdin commands. " + _OUTPUT
    ),
    "rapidtest": (
        "while it runs:\n  no stdin commands: faults are chosen with --fault when it starts. With --tests N it exits 0\n"
        "  once the host acknowledged N results; SIGTERM or SIGINT stop it (an open session is closed with EOT).\n  "
        + _OUTPUT
    ),
    "signpad": (
        "while it runs:\n  no stdin commands: the signer is scripted by the options. SIGTERM or SIGINT stop it.\n  "
        + _OUTPUT
    ),
    "platform": (
        "while it runs:\n  no stdin commands; SIGTERM or SIGINT stop it. stdout line 1: the ingest address (mutual TLS);\n"
        "  line 2: `enroll HOST:PORT` (the enrolment listener). Tokens: `egw platform tokens --data DIR`."
    ),
    "platform-mqtt": (
        "while it runs:\n  no stdin commands; SIGTERM or SIGINT stop it. stdout: `mqtt://HOST:PORT egw/v1/#` first, then\n"
        "  one line per message received. `egw simulate platform-mqtt cmd …` sends one signed command and exits."
    ),
    "strips": "it writes the photos (and their expected readings) and exits; nothing to drive while it runs.",
    "terminal": (
        "while it runs:\n  no stdin commands: the options script it (pair once with --pair, then upload --photos,\n"
        "  --video-seconds, --upload files into --case, follow results for --follow seconds); it exits when done.\n"
        "  stdout: one JSON line per step (paired, uploaded with its evidence id and digest, result)."
    ),
}

