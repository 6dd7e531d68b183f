"""What a release location holds: DEST/<run id>/ with these files, and DEST/LATEST naming the newest."""

MANIFEST = "manifest.parquet"
LATEST = "LATEST"
IMAGES = "images/"
REPORT_FILES = ("report.json", "report.html", "report.pdf")
REPORT_PREFIXES = ("data_docs/",)  # validation evidence published with the report
