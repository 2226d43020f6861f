//! Walking, re-owning and removing a directory tree that user code built, by descriptor.
//!
//! User code decides the tree's shape: names, depth (deeper than `PATH_MAX`), width, links.
//! So no full path is ever built for a system call: each step is `openat`/`statat`/
//! `unlinkat` relative to the directory it is in, with `O_NOFOLLOW` (a symlink is an entry,
//! never a way out). Walks stop at a depth and an entry count; removal goes to any depth
//! with two descriptors open.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Stat, Uid};
use rustix::io::Errno;

/// Directory levels a walk descends; what is deeper is not seen.
pub const MAX_DEPTH: usize = 128;

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// One entry of a walk.
pub struct Entry<'a> {
    /// Its path below the root, `/`-separated (lossy for names that are not UTF-8).
    pub rel: &'a str,
    pub name: &'a CStr,
    pub stat: &'a Stat,
}

impl Entry<'_> {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

/// Whether a walk went through everything or stopped at its entry limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walked {
    All,
    Truncated,
}

/// Visit every entry below `root` (not `root` itself), parents before children, at most
/// `max_entries` and [`MAX_DEPTH`] levels. `visit` returns whether to enter a directory.
/// Descriptors held: one per level of the current path (the pending siblings share theirs).
pub fn walk(
    root: &Path,
    max_entries: usize,
    mut visit: impl FnMut(&Entry<'_>) -> bool,
) -> io::Result<Walked> {
    let top = match rustix::fs::open(root, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Walked::All),
        Err(err) => return Err(err.into()),
    };
    // Directories still to read: (their parent, name, path below the root, depth).
    let mut pending: Vec<(Arc<OwnedFd>, Option<CString>, String, usize)> =
        vec![(Arc::new(top), None, String::new(), 0)];
    let mut seen = 0usize;
    while let Some((parent, name, rel, depth)) = pending.pop() {
        let dir = match &name {
            None => parent,
            Some(name) => {
                match rustix::fs::openat(&*parent, name.as_c_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) => Arc::new(fd),
                    // Gone or replaced by a symlink since it was listed.
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
        };
        for entry in Dir::read_from(dir.as_fd())? {
            let entry = entry?;
            let child = entry.file_name();
            if child == c"." || child == c".." {
                continue;
            }
            seen += 1;
            if seen > max_entries {
                return Ok(Walked::Truncated);
            }
            let stat = match rustix::fs::statat(&*dir, child, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(err.into()),
            };
            let child_name = child.to_string_lossy();
            let child_rel = if rel.is_empty() {
                child_name.into_owned()
            } else {
                format!("{rel}/{child_name}")
            };
            let item = Entry {
                rel: &child_rel,
                name: child,
                stat: &stat,
            };
            let enter = visit(&item);
            if enter && item.file_type() == FileType::Directory && depth + 1 < MAX_DEPTH {
                pending.push((
                    Arc::clone(&dir),
                    Some(child.to_owned()),
                    child_rel,
                    depth + 1,
                ));
            }
        }
    }
    Ok(Walked::All)
}

/// What a tree costs on disk, as [`disk_usage`] measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (`st_blocks` x 512) of every inode, each counted once.
    pub bytes: u64,
    /// Entries looked at.
    pub entries: usize,
    /// `false` when the walk stopped at its entry limit (the tree holds more).
    pub complete: bool,
    /// The apparent size (`st_size`) of the largest regular file seen.
    pub largest_file: u64,
}

/// The real bytes a tree takes: the allocated blocks of every inode below `root` and of
/// `root` itself, directories and symlinks included, a file with many hard links once, a
/// sparse file by what it allocated. User code shapes the tree, so this goes to any depth
/// with two descriptors open (it climbs back by `..` and checks that it came back to the
/// directory it left, or fails), and looks at `max_entries` entries at most.
pub fn disk_usage(root: &Path, max_entries: usize) -> io::Result<Usage> {
    use std::collections::HashSet;
    /// A directory on the current path and its subdirectories not visited yet.
    struct Level {
        id: (u64, u64),
        todo: Vec<CString>,
    }
    fn id(stat: &Stat) -> (u64, u64) {
        (stat.st_dev, stat.st_ino)
    }
    let mut current = match rustix::fs::open(root, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            return Ok(Usage {
                bytes: 0,
                entries: 0,
                complete: true,
                largest_file: 0,
            });
        }
        Err(err) => return Err(err.into()),
    };
    let top = rustix::fs::fstat(&current)?;
    let mut usage = Usage {
        bytes: top.st_blocks as u64 * 512,
        entries: 0,
        complete: true,
        largest_file: 0,
    };
    // Inodes with more than one link that were counted already.
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let mut path = vec![Level {
        id: id(&top),
        todo: Vec::new(),
    }];
    // Count the entries of `dir`; its subdirectories go to `todo`.
    let mut read =
        |dir: &OwnedFd, todo: &mut Vec<CString>, usage: &mut Usage| -> io::Result<bool> {
            for entry in Dir::read_from(dir.as_fd())? {
                let entry = entry?;
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                usage.entries += 1;
                if usage.entries > max_entries {
                    usage.complete = false;
                    return Ok(false);
                }
                let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => stat,
                    Err(Errno::NOENT) => continue,
                    Err(err) => return Err(err.into()),
                };
                let kind = FileType::from_raw_mode(stat.st_mode);
                if kind == FileType::Directory {
                    todo.push(name.to_owned());
                }
                if kind == FileType::RegularFile {
                    usage.largest_file = usage.largest_file.max(stat.st_size as u64);
                }
                if kind == FileType::Directory || stat.st_nlink <= 1 || linked.insert(id(&stat)) {
                    usage.bytes = usage.bytes.saturating_add(stat.st_blocks as u64 * 512);
                }
            }
            Ok(true)
        };
    if !read(&current, &mut path[0].todo, &mut usage)? {
        return Ok(usage);
    }
    while let Some(level) = path.last_mut() {
        if let Some(name) = level.todo.pop() {
            let next =
                match rustix::fs::openat(&current, name.as_c_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    // Gone or replaced since it was listed.
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                    Err(err) => return Err(err.into()),
                };
            let mut todo = Vec::new();
            if !read(&next, &mut todo, &mut usage)? {
                return Ok(usage);
            }
            path.push(Level {
                id: id(&rustix::fs::fstat(&next)?),
                todo,
            });
            current = next;
            continue;
        }
        path.pop();
        let Some(parent) = path.last() else {
            break;
        };
        let up = rustix::fs::openat(&current, c"..", dir_flags(), Mode::empty())?;
        if id(&rustix::fs::fstat(&up)?) != parent.id {
            return Err(io::Error::other("the tree was moved while it was measured"));
        }
        current = up;
    }
    Ok(usage)
}

/// Make `uid` (and the group of the same number) own `root` and everything below it to
/// [`MAX_DEPTH`] levels; symlinks are changed themselves, never followed.
pub fn give_tree(root: &Path, uid: u32) -> io::Result<()> {
    let (owner, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)));
    let top = rustix::fs::open(root, dir_flags(), Mode::empty())?;
    rustix::fs::fchown(&top, owner, group)?;
    drop(top);
    let mut failed = None;
    chown_below(root, owner, group, &mut failed)?;
    failed.map_or(Ok(()), Err)
}

fn chown_below(
    root: &Path,
    owner: Option<Uid>,
    group: Option<Gid>,
    failed: &mut Option<io::Error>,
) -> io::Result<()> {
    let top = rustix::fs::open(root, dir_flags(), Mode::empty())?;
    let mut pending: Vec<(Arc<OwnedFd>, Option<CString>, usize)> = vec![(Arc::new(top), None, 0)];
    while let Some((parent, name, depth)) = pending.pop() {
        let dir = match &name {
            None => parent,
            Some(name) => {
                match rustix::fs::openat(&*parent, name.as_c_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) => Arc::new(fd),
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
        };
        for entry in Dir::read_from(dir.as_fd())? {
            let entry = entry?;
            let child = entry.file_name();
            if child == c"." || child == c".." {
                continue;
            }
            match rustix::fs::chownat(&*dir, child, owner, group, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(err) => {
                    failed.get_or_insert(err.into());
                }
            }
            let is_dir = match entry.file_type() {
                FileType::Unknown => rustix::fs::statat(&*dir, child, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
                t => t == FileType::Directory,
            };
            if is_dir && depth + 1 < MAX_DEPTH {
                pending.push((Arc::clone(&dir), Some(child.to_owned()), depth + 1));
            }
        }
    }
    Ok(())
}

/// Remove `path` and everything below it, however deep, holding two descriptors at a time.
/// Missing is not an error. Meant for a tree nobody writes any more (a stopped session's):
/// what appears during the removal is removed too, a few rounds over.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(base)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no parent"));
    };
    let base = CString::new(base.as_encoded_bytes()).map_err(io::Error::other)?;
    let parent = rustix::fs::open(parent, dir_flags(), Mode::empty())?;
    for _ in 0..ROUNDS {
        match remove_round(&parent, &base) {
            Ok(true) => return Ok(()),
            Ok(false) => continue,
            Err(err) if err.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => return Ok(()),
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other(
        "the tree kept changing while it was removed",
    ))
}

/// Attempts at a tree that changes under the removal.
const ROUNDS: usize = 8;

/// One pass: empty and remove `base` below `parent`. `Ok(false)` when something went
/// missing or appeared meanwhile and another pass is needed.
fn remove_round(parent: &OwnedFd, base: &CStr) -> io::Result<bool> {
    match rustix::fs::unlinkat(parent, base, AtFlags::empty()) {
        // A file, a symlink or a socket: done.
        Ok(()) => return Ok(true),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(err) => return Err(err.into()),
    }
    // The names from `base` down to the directory being emptied; only it is open.
    let mut names: Vec<CString> = vec![base.to_owned()];
    let mut current = rustix::fs::openat(parent, base, dir_flags(), Mode::empty())?;
    loop {
        let mut subdir = None;
        let entries = Dir::read_from(current.as_fd())?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&current, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
                _ => false,
            };
            if is_dir {
                subdir.get_or_insert_with(|| name.to_owned());
                continue;
            }
            match rustix::fs::unlinkat(&current, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(err) => return Err(err.into()),
            }
        }
        if let Some(name) = subdir {
            let next =
                match rustix::fs::openat(&current, name.as_c_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                    Err(err) => return Err(err.into()),
                };
            names.push(name);
            current = next;
            continue;
        }
        // `current` is empty: remove it from its parent and go on there.
        let name = names.pop().unwrap_or_default();
        let up = if names.is_empty() {
            None
        } else {
            Some(rustix::fs::openat(
                &current,
                c"..",
                dir_flags(),
                Mode::empty(),
            )?)
        };
        let holder = up.as_ref().unwrap_or(parent);
        match rustix::fs::unlinkat(holder, name.as_c_str(), AtFlags::REMOVEDIR) {
            Ok(()) => {}
            // Something was added (or moved) meanwhile: another pass.
            Err(Errno::NOTEMPTY | Errno::NOENT | Errno::EXIST) => return Ok(false),
            Err(err) => return Err(err.into()),
        }
        match up {
            None => return Ok(true),
            Some(fd) => current = fd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `depth` directories named `d`, each with a file, below `root`.
    fn deep_chain(root: &Path, depth: usize) {
        let mut dir = rustix::fs::open(root, dir_flags(), Mode::empty()).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
            let f = rustix::fs::openat(
                &dir,
                "f",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            drop(f);
            dir = rustix::fs::openat(&dir, "d", dir_flags(), Mode::empty()).unwrap();
        }
    }

    #[test]
    fn a_tree_deeper_than_path_max_is_walked_to_the_limit_and_removed() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        // 3,000 levels of "d/": 6,000 bytes of path, more than PATH_MAX (4,096).
        deep_chain(&root, 3000);
        let mut deepest = 0;
        let walked = walk(&root, usize::MAX, |e| {
            deepest = deepest.max(e.rel.matches('/').count() + 1);
            true
        })
        .unwrap();
        assert_eq!(walked, Walked::All);
        assert_eq!(deepest, MAX_DEPTH);
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        remove_tree(&root).unwrap();
    }

    #[test]
    fn disk_usage_counts_allocated_blocks_once_per_inode_at_any_depth() {
        use std::os::unix::fs::MetadataExt;
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        let empty = disk_usage(&root, usize::MAX).unwrap();
        // A sparse file of 1 GiB with 100 more names allocates (almost) nothing.
        let sparse = std::fs::File::create(root.join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        for i in 0..100 {
            std::fs::hard_link(root.join("sparse"), root.join(format!("link{i}"))).unwrap();
        }
        let linked = disk_usage(&root, usize::MAX).unwrap();
        assert!(linked.bytes - empty.bytes < 1 << 20, "{linked:?}");
        // 1 MiB of real data, 3,000 levels down (past PATH_MAX), is seen in full.
        deep_chain(&root, 3000);
        let mut dir = rustix::fs::open(&root, dir_flags(), Mode::empty()).unwrap();
        for _ in 0..3000 {
            dir = rustix::fs::openat(&dir, "d", dir_flags(), Mode::empty()).unwrap();
        }
        let file = rustix::fs::openat(
            &dir,
            "data",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&file, &vec![7u8; 1 << 20]).unwrap();
        rustix::fs::fsync(&file).unwrap();
        let deep = disk_usage(&root, usize::MAX).unwrap();
        assert!(deep.complete);
        assert_eq!(deep.entries, 101 + 3000 * 2 + 1);
        let data = rustix::fs::fstat(&file).unwrap().st_blocks as u64 * 512;
        assert!(deep.bytes >= linked.bytes + data, "{deep:?}");
        assert_eq!(
            deep.largest_file,
            1 << 30,
            "the sparse file's apparent size"
        );
        assert!(root.metadata().unwrap().blocks() > 0);
        // The entry limit stops it and says so.
        let cut = disk_usage(&root, 50).unwrap();
        assert!(!cut.complete && cut.entries == 51);
        remove_tree(&root).unwrap();
        assert_eq!(
            disk_usage(&root, usize::MAX).unwrap(),
            Usage {
                bytes: 0,
                entries: 0,
                complete: true,
                largest_file: 0,
            }
        );
    }

    #[test]
    fn walks_stop_at_the_entry_limit_and_never_follow_symlinks() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        for i in 0..50 {
            std::fs::write(root.join(format!("f{i}")), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        let mut names = Vec::new();
        walk(&root, usize::MAX, |e| {
            names.push(e.rel.to_owned());
            true
        })
        .unwrap();
        assert_eq!(names.len(), 51);
        assert!(!names.iter().any(|n| n.starts_with("escape/")));
        assert_eq!(walk(&root, 10, |_| true).unwrap(), Walked::Truncated);
        remove_tree(&root).unwrap();
        assert!(Path::new("/etc/passwd").exists());
    }
}
