"""What a release location holds: DEST/<run id>/ with these files, and DEST/LATEST naming the newest."""

import re

from anonymizer.exit_codes import UsageError

MANIFEST = "manifest.parquet"
LATEST = "LATEST"
IMAGES = "images/"
REPORT_FILES = ("report.json", "report.html", "report.pdf")
REPORT_PREFIXES = ("data_docs/",)  # validation evidence published with the report

# A run id names DEST/<run id>/ and the run's staging and quarantine folders: a name, never a path.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise UsageError(f"invalid run id {run_id!r}: a run id is a name of 1-128 characters from A-Z a-z 0-9 . _ -, "
                         "starting with a letter or digit (never a path)")
    return run_id
