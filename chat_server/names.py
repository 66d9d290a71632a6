"""Usernames: when two names are the same, and which new names are refused.

- **Same name** is `name_key()`: NFKC (a mathematical bold `a` is `a`, full-width is ASCII), case
  folded, accents dropped (`José` is `jose`, as the seed's utf8mb4_unicode_ci had it), runs of
  spaces one space.
  It is computed here, stored in `usuarios.name_key` and unique on every store, so SQLite,
  MariaDB and MySQL agree on it; no collation decides it (utf8mb4_unicode_ci ignores zero-width
  characters and takes every character outside the BMP for the same one).
- **New names** (`refuse_new_name()`) must not hold invisible characters (the PRECIS
  FreeformClass of RFC 8264 disallows controls, default-ignorable code points such as zero-width
  characters, the soft hyphen, bidi controls, variation selectors and Hangul fillers, and
  unassigned code points, whose key a later Unicode could change), nor U+FFFD (text that was
  decoded wrongly somewhere), must show something, and must not look like `admin` (the UTS #39
  confusables skeleton, from ICU) unless they are admin's name, nor like any user's name (the
  skeleton of its key, `name_skeleton()`, stored in `usuarios.name_skeleton`; the store checks).
- **Existing names are never refused**: a name is looked up by its key first, and the rules above
  apply only to creating a user, so a user made before them logs in with their name as it is.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata

import icu
import precis_i18n

from .errors import BadRequest
from .models import ADMIN_USERNAME

# usuarios.name_key and name_skeleton are VARCHAR(255); a longer value (NFKC expands some
# characters up to 18-fold) is stored as a digest of itself, which stays unique.
MAX_KEY_CHARS = 255
# Blank, yet letters or symbols to Unicode (the Hangul fillers are default-ignorable already).
BLANKS = frozenset("\u2800\u3164\uffa0\u115f\u1160")
REPLACEMENT = "\ufffd"

_FREEFORM = precis_i18n.get_profile("FreeformClass")
# Built once: ICU loads its confusables data here; getSkeleton only reads it.
_SPOOF = icu.SpoofChecker()


@functools.lru_cache(maxsize=4096)  # asked on every request by name: three normalisations
def name_key(name: str) -> str:
    """The one notion of "same name": equal keys are one user, on every store."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    bare = "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))
    return _fit(" ".join(unicodedata.normalize("NFC", bare).split()))


def name_skeleton(name: str) -> str:
    """What usuarios.name_skeleton holds: two users whose names have one skeleton look alike
    (`ana`, and `ana` with a Cyrillic a), and a new name may not look like a user's."""
    return _fit(skeleton(name_key(name)))


def _fit(value: str) -> str:
    return "#" + hashlib.sha256(value.encode()).hexdigest() if len(value) > MAX_KEY_CHARS else value


ADMIN_KEY = name_key(ADMIN_USERNAME)


def skeleton(name: str) -> str:
    """UTS #39: names with one skeleton look alike (`admin` with a Cyrillic a, `adrnin`)."""
    return str(_SPOOF.getSkeleton(0, unicodedata.normalize("NFKC", name)))


def skeletons(name: str) -> set[str]:
    """The name's skeletons as written and case folded: a skeleton keeps case, and `ADMlN` (a
    lower-case L) looks like `ADMIN`, not like `admin`."""
    return {skeleton(name), skeleton(name.casefold())}


# How admin's name is written: a look-alike of any of these is refused.
_ADMIN_SKELETONS = {
    skeleton(form) for form in (ADMIN_USERNAME, ADMIN_USERNAME.title(), ADMIN_USERNAME.upper())
}


def refuse_new_name(name: str, field: str = "username") -> None:
    """400 unless `name` (trimmed, NFC) may become a new user's name (see the module docstring)."""
    try:
        _FREEFORM.enforce(name)
    except UnicodeEncodeError as exc:
        code = f"U+{ord(name[exc.start]):04X}"
        reason = "invisible" if "ignorable" in exc.reason else "not allowed"
        raise BadRequest(f"{field} has a character that is {reason} in names ({code})", field=field) from None
    if REPLACEMENT in name:
        raise BadRequest(f"{field} has U+FFFD: text that was decoded wrongly on its way", field=field)
    if not any(unicodedata.category(c)[0] in "LNPS" and c not in BLANKS for c in name):
        raise BadRequest(f"{field} has nothing visible", field=field)
    if name_key(name) != ADMIN_KEY and skeletons(name) & _ADMIN_SKELETONS:
        raise BadRequest(f"{field} looks like {ADMIN_USERNAME}", field=field)
