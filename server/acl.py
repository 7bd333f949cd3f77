"""POSIX ACL entries that let one user pass through a folder (x only), and nobody else.

As root the embedded server runs as its own user, which must walk through the folders above its
binaries and data directory (root's home is 0700 on a fresh machine). chmod o+x would open them to
every user; an ACL entry opens them to that one user. Linux keeps a folder's access ACL in the
`system.posix_acl_access` attribute: a version word, then (tag, permissions, id) entries in tag order.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

ATTRIBUTE = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF
EXECUTE = 1
ENTRY = struct.Struct("<HHI")


def entries(folder: Path) -> list[tuple[int, int, int]]:
    """The folder's ACL as (tag, permissions, id), or [] when it has none beyond its mode bits."""
    try:
        data = os.getxattr(folder, ATTRIBUTE)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return []
        raise
    return [ENTRY.unpack_from(data, at) for at in range(4, len(data), ENTRY.size)]


def user_can_pass(folder: Path, uid: int, gid: int) -> bool:
    """Whether user uid (primary group gid, no others) may pass through the folder, as the kernel decides."""
    info = folder.stat()
    acl = entries(folder)
    if info.st_uid == uid:
        return bool(info.st_mode & 0o100)
    mask = next((perm for tag, perm, _ in acl if tag == MASK), 7)
    named = next((perm for tag, perm, who in acl if tag == USER and who == uid), None)
    if named is not None:
        return bool(named & mask & EXECUTE)
    if info.st_gid == gid:
        group = next((perm for tag, perm, _ in acl if tag == GROUP_OBJ), (info.st_mode >> 3) & 7)
        return bool(group & mask & EXECUTE)
    return bool(info.st_mode & 0o001)


def let_pass(folder: Path, uid: int) -> bool:
    """Add (or widen to x) an ACL entry for user uid on the folder; False when it cannot be (a file
    system without ACLs, or a read-only one). The mask gains x only, so the owning group keeps
    what it had (a named entry that held x under a mask without it gets it back)."""
    mode = stat.S_IMODE(folder.stat().st_mode)
    acl = entries(folder) or [(USER_OBJ, (mode >> 6) & 7, NO_ID), (GROUP_OBJ, (mode >> 3) & 7, NO_ID),
                              (OTHER, mode & 7, NO_ID)]
    named = {who: perm for tag, perm, who in acl if tag == USER}
    named[uid] = named.get(uid, 0) | EXECUTE
    old_mask = next((perm for tag, perm, _ in acl if tag == MASK), None)
    if old_mask is not None:
        mask = old_mask | EXECUTE
    else:                   # a new mask must not cut what the owning group had
        mask = 0
        for tag, perm, _ in acl:
            mask |= perm if tag in (GROUP_OBJ, GROUP) else 0
        mask |= EXECUTE
    kept = [(tag, perm, who) for tag, perm, who in acl if tag not in (USER, MASK)]
    new = kept + [(USER, perm, who) for who, perm in named.items()] + [(MASK, mask, NO_ID)]
    new.sort(key=lambda e: (e[0], e[2]))
    data = struct.pack("<I", VERSION) + b"".join(ENTRY.pack(*e) for e in new)
    try:
        os.setxattr(folder, ATTRIBUTE, data)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EROFS, errno.EPERM, errno.EACCES):
            return False
        raise
    return True
