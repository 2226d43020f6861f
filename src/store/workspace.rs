//! Filesystem operations inside one workspace that can never be redirected out of it.
//!
//! User code owns the workspace and may plant symlinks anywhere in it, at any time. Every
//! path is therefore resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a
//! descriptor of the workspace root, segment by segment, so the kernel refuses any step
//! that would leave it or follow a link, with no check-then-use race.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};

use super::FileName;

const DIR_MODE: u32 = 0o755;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

pub struct Workspace<'a> {
    root: &'a Path,
    /// Who owns what the server creates here (the sandbox user, when the server is root).
    owner: Option<(u32, u32)>,
}

impl<'a> Workspace<'a> {
    pub fn new(root: &'a Path, owner: Option<(u32, u32)>) -> Self {
        Workspace { root, owner }
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?)
    }

    /// The directory `rel` below the root (the root itself for `None`), created when asked.
    fn open_dir(&self, rel: Option<&str>, create: bool) -> io::Result<OwnedFd> {
        let mut dir = self.open_root()?;
        for segment in rel.into_iter().flat_map(|r| r.split('/')) {
            if create {
                match rustix::fs::mkdirat(&dir, segment, Mode::from_raw_mode(DIR_MODE)) {
                    Ok(()) => {
                        if let Some((uid, gid)) = self.owner {
                            rustix::fs::chownat(
                                &dir,
                                segment,
                                Some(rustix::fs::Uid::from_raw(uid)),
                                Some(rustix::fs::Gid::from_raw(gid)),
                                AtFlags::SYMLINK_NOFOLLOW,
                            )?;
                        }
                    }
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            dir = rustix::fs::openat2(
                &dir,
                segment,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
                resolve_flags(),
            )?;
        }
        Ok(dir)
    }

    /// Move a file from outside (the staging area) to `name`, replacing what is there.
    pub fn rename_into(&self, from: &Path, name: &FileName) -> io::Result<()> {
        let parent = self.open_dir(name.parent(), true)?;
        rustix::fs::renameat(CWD, from, &parent, name.base_name())?;
        Ok(())
    }

    /// Open a regular file for reading; symlinks, directories and devices are refused.
    pub fn open_file(&self, name: &FileName) -> io::Result<File> {
        let root = self.open_root()?;
        let fd = rustix::fs::openat2(
            &root,
            name.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
            resolve_flags(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(File::from(fd))
    }

    /// Remove `name` if present; a missing file is not an error.
    pub fn remove(&self, name: &FileName) -> io::Result<()> {
        let parent = match self.open_dir(name.parent(), false) {
            Ok(dir) => dir,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        };
        match rustix::fs::unlinkat(&parent, name.base_name(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_the_workspace_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etcdir")).unwrap();
        let ws = Workspace::new(&root, None);
        assert!(ws.open_file(&FileName::parse("link").unwrap()).is_err());
        assert!(
            ws.open_file(&FileName::parse("etcdir/passwd").unwrap())
                .is_err()
        );

        // Writing through a symlinked directory is refused too.
        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"x").unwrap();
        assert!(
            ws.rename_into(&staged, &FileName::parse("etcdir/evil").unwrap())
                .is_err()
        );
        assert!(!Path::new("/etc/evil").exists());
    }

    #[test]
    fn nested_names_get_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"hello").unwrap();
        let ws = Workspace::new(dir.path(), None);
        let name = FileName::parse("a/b/c.txt").unwrap();
        ws.rename_into(&staged, &name).unwrap();
        let mut text = String::new();
        io::Read::read_to_string(&mut ws.open_file(&name).unwrap(), &mut text).unwrap();
        assert_eq!(text, "hello");
        ws.remove(&name).unwrap();
        ws.remove(&name).unwrap();
    }
}
