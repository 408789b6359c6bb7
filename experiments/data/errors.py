"""The one exception type of the data layer, and the logger every data module writes to."""

from __future__ import annotations

import logging

# All data modules log here (not to per-module children) so one name catches every skipped-record warning.
logger = logging.getLogger("experiments.data")


# what a strict-mode record error adds, wherever the record failed (reading or tokenising)
STRICT_HINT = "data.strict=false skips such records"


class DataError(ValueError):
    """A data problem. The message is one line naming the file (or hub set), the record and what is wrong."""


def one_line(text: str) -> str:
    """Collapse a message onto one line (library errors often span several)."""
    return " ".join(str(text).split())
