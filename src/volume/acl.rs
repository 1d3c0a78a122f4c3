//! POSIX access ACLs as the `system.posix_acl_access` xattr carries them
//! (Linux's posix_acl_xattr format: a u32 version 2, then 8-byte entries
//! of u16 tag, u16 permissions, u32 id, all little-endian).
//!
//! The kernel passes this xattr through to a FUSE filesystem, so the volume
//! keeps it and the mode bits in step, as an ACL-aware filesystem does:
//! setting an ACL sets the mode it implies (and an ACL that only restates
//! the mode is not stored at all: `cp -a` sets one on every file), and
//! chmod rewrites the entries the mode owns.

pub const ACCESS_XATTR: &[u8] = b"system.posix_acl_access";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// What an access ACL means for the mode bits.
#[derive(Debug, PartialEq, Eq)]
pub struct ModeOfAcl {
    /// The rwx bits (0o777) the ACL implies.
    pub mode: u16,
    /// True when the ACL says nothing the mode bits do not.
    pub equivalent: bool,
}

/// Parses an access ACL; None when it is malformed (EINVAL).
pub fn mode_of(value: &[u8]) -> Option<ModeOfAcl> {
    let (version, entries) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != VERSION || entries.len() % 8 != 0 {
        return None;
    }
    let (mut user, mut group, mut other, mut mask) = (None, None, None, None);
    let mut extended = false;
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        if perm & !0o7 != 0 {
            return None;
        }
        let slot = match tag {
            USER_OBJ => &mut user,
            GROUP_OBJ => &mut group,
            OTHER => &mut other,
            MASK => &mut mask,
            USER | GROUP => {
                extended = true;
                continue;
            }
            _ => return None,
        };
        if slot.replace(perm).is_some() {
            return None; // a base entry twice
        }
    }
    let (user, group, other) = (user?, group?, other?);
    if extended && mask.is_none() {
        return None; // named entries need a mask
    }
    Some(ModeOfAcl {
        mode: user << 6 | mask.unwrap_or(group) << 3 | other,
        equivalent: !extended && mask.is_none(),
    })
}

/// The ACL after chmod to `mode`: the owner, mask (or group when there is
/// no mask) and other entries take the new bits; named entries stay.
pub fn with_mode(value: &[u8], mode: u16) -> Vec<u8> {
    let has_mask = value
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(8)
        .any(|e| u16::from_le_bytes([e[0], e[1]]) == MASK);
    let mut out = value.to_vec();
    for e in out.get_mut(4..).unwrap_or_default().chunks_exact_mut(8) {
        let perm = match u16::from_le_bytes([e[0], e[1]]) {
            USER_OBJ => mode >> 6 & 0o7,
            MASK => mode >> 3 & 0o7,
            GROUP_OBJ if !has_mask => mode >> 3 & 0o7,
            OTHER => mode & 0o7,
            _ => continue,
        };
        e[2..4].copy_from_slice(&perm.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn a_trivial_acl_is_the_mode() {
        // What `cp -a` sets for a 0644 file.
        let v = acl(&[(USER_OBJ, 6, ANY), (GROUP_OBJ, 4, ANY), (OTHER, 4, ANY)]);
        assert_eq!(
            mode_of(&v),
            Some(ModeOfAcl {
                mode: 0o644,
                equivalent: true
            })
        );
    }

    #[test]
    fn the_mask_sets_the_group_bits_of_an_extended_acl() {
        let v = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 5, 1000),
            (GROUP_OBJ, 4, ANY),
            (MASK, 5, ANY),
            (OTHER, 0, ANY),
        ]);
        assert_eq!(
            mode_of(&v),
            Some(ModeOfAcl {
                mode: 0o750,
                equivalent: false
            })
        );
        let chmodded = with_mode(&v, 0o701);
        assert_eq!(mode_of(&chmodded).unwrap().mode, 0o701);
        // The named entry keeps its permissions.
        assert_eq!(chmodded[4 + 8 + 2], 5);
        // The owning group entry is not the mask's.
        assert_eq!(chmodded[4 + 16 + 2], 4);
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert_eq!(mode_of(b""), None);
        assert_eq!(mode_of(&acl(&[(USER_OBJ, 6, ANY)])), None); // no group/other
        let mut v = acl(&[(USER_OBJ, 6, ANY), (GROUP_OBJ, 4, ANY), (OTHER, 4, ANY)]);
        v.push(0);
        assert_eq!(mode_of(&v), None); // torn entry
        let named_without_mask = acl(&[
            (USER_OBJ, 6, ANY),
            (USER, 6, 7),
            (GROUP_OBJ, 4, ANY),
            (OTHER, 4, ANY),
        ]);
        assert_eq!(mode_of(&named_without_mask), None);
        assert_eq!(
            mode_of(&acl(&[
                (USER_OBJ, 8, ANY),
                (GROUP_OBJ, 4, ANY),
                (OTHER, 4, ANY)
            ])),
            None
        );
    }
}
