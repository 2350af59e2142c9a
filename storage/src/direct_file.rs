//! Writing a large file past the page cache (`O_DIRECT`), for snapshots.
//!
//! A buffered `write` copies every byte into the page cache, and on this project's virtual
//! machines that copy cost 2 s of CPU per GB (`dd` with and without `oflag=direct`: 2.02 s
//! against 0.09 s of system time for 1,000 MiB). A snapshot build writes the whole state, so
//! under load the copy took more of the nodes' CPU than encoding the snapshot did
//! (`copy_folio_from_iter_atomic` on the `corral-snapshot` thread, 4.7 % of all samples
//! creating regions). With `O_DIRECT` the device reads the data from the writer's own
//! blocks; nothing reads a snapshot file back soon enough to want it cached.
//!
//! `O_DIRECT` wants the memory, the length and the file offset of each write aligned to the
//! device's logical block size: [`DirectWriter`] gathers the data in 4 KiB-aligned blocks,
//! writes whole blocks, pads the last one with zeros and cuts the file to its real length.
//! [`direct_io_in`] tries one direct write in the data directory when a node opens its store;
//! where it fails (file systems without `O_DIRECT`: some FUSE ones, tmpfs before Linux 6.6)
//! snapshots go through the page cache as before, and RocksDB's memtable flushes and
//! compactions use `O_DIRECT` only where it succeeds.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The alignment of every direct write: 4 KiB covers the logical block sizes Linux devices use.
const BLOCK: usize = 4096;

/// Blocks written per system call (1 MiB).
const BLOCKS_PER_WRITE: usize = 256;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// A file being written with `O_DIRECT`.
pub(crate) struct DirectWriter {
    file: File,
    blocks: Vec<Block>,
    /// Bytes gathered in `blocks`, not yet written.
    filled: usize,
    /// Bytes written to the file so far.
    written: u64,
}

impl DirectWriter {
    /// Creates (or truncates) `path` for direct writes; `None` if its file system has no
    /// `O_DIRECT`.
    pub(crate) fn create(path: &Path) -> std::io::Result<Option<DirectWriter>> {
        let opened = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path);
        match opened {
            Ok(file) => Ok(Some(DirectWriter {
                file,
                blocks: vec![Block([0; BLOCK]); BLOCKS_PER_WRITE],
                filled: 0,
                written: 0,
            })),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the first `count` blocks.
    fn write_blocks(&mut self, count: usize) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self.blocks[..count].iter().map(|b| IoSlice::new(&b.0)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            // Retried here, never by a caller's `write_all`: that would write every block
            // again from the start, at an offset already past some of them.
            let n = match self.file.write_vectored(rest) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n as u64;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// Writes what is left (the last block padded with zeros), cuts the file to the length
    /// written and returns it, not yet synced.
    pub(crate) fn finish(mut self) -> std::io::Result<File> {
        let length = self.written + self.filled as u64;
        let count = self.filled.div_ceil(BLOCK);
        if let Some(last) = self.blocks.get_mut(self.filled / BLOCK) {
            last.0[self.filled % BLOCK..].fill(0);
        }
        self.write_blocks(count)?;
        self.file.set_len(length)?;
        Ok(self.file)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.filled == BLOCK * BLOCKS_PER_WRITE {
            self.write_blocks(BLOCKS_PER_WRITE)?;
            self.filled = 0;
        }
        let block = &mut self.blocks[self.filled / BLOCK].0;
        let at = self.filled % BLOCK;
        let n = buf.len().min(BLOCK - at);
        block[at..at + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        Ok(n)
    }

    /// Nothing: only whole blocks can be written before [`DirectWriter::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether files in `dir` (created if missing) can be written with `O_DIRECT`: a file there
/// takes a direct open, one padded block and the cut to its length.
pub(crate) fn direct_io_in(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join("direct-io-probe");
    let direct = match DirectWriter::create(&probe) {
        Ok(Some(mut writer)) => writer.write_all(b"probe").is_ok() && writer.finish().is_ok(),
        _ => false,
    };
    // A probe left behind by a failed removal is harmless; the next open overwrites it.
    let _ = std::fs::remove_file(&probe);
    if !direct {
        tracing::info!(dir = %dir.display(), "no O_DIRECT here: flushes and snapshots go through the page cache");
    }
    direct
}

/// A snapshot file being written: directly where the file system allows it, else through
/// the page cache.
pub(crate) enum SnapshotWriter {
    Direct(DirectWriter),
    Buffered(BufWriter<File>),
}

impl SnapshotWriter {
    /// Creates (or truncates) `path`, for direct writes with `direct_io` ([`direct_io_in`]'s
    /// answer for its directory) if the open allows them.
    pub(crate) fn create(path: &Path, direct_io: bool) -> std::io::Result<SnapshotWriter> {
        if direct_io {
            if let Some(direct) = DirectWriter::create(path)? {
                return Ok(SnapshotWriter::Direct(direct));
            }
        }
        Ok(SnapshotWriter::Buffered(BufWriter::with_capacity(BLOCK * BLOCKS_PER_WRITE, File::create(path)?)))
    }

    /// Writes what is left; returns the file, not yet synced.
    pub(crate) fn finish(self) -> std::io::Result<File> {
        match self {
            SnapshotWriter::Direct(direct) => direct.finish(),
            SnapshotWriter::Buffered(buffered) => buffered.into_inner().map_err(|e| e.into_error()),
        }
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SnapshotWriter::Direct(direct) => direct.write(buf),
            SnapshotWriter::Buffered(buffered) => buffered.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SnapshotWriter::Direct(direct) => direct.flush(),
            SnapshotWriter::Buffered(buffered) => buffered.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths around the block and write boundaries, in pieces of awkward sizes, written
    /// directly (where the temporary directory's file system has `O_DIRECT`) and buffered.
    #[test]
    fn what_is_written_reads_back_byte_for_byte() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let sizes =
            [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, BLOCK * BLOCKS_PER_WRITE, BLOCK * BLOCKS_PER_WRITE + 7, 3_000_001];
        for size in sizes {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            for how in ["direct", "buffered"] {
                let path = dir.path().join(format!("file-{size}-{how}"));
                let writer = if how == "direct" {
                    DirectWriter::create(&path).expect("create").map(SnapshotWriter::Direct)
                } else {
                    Some(SnapshotWriter::Buffered(BufWriter::new(File::create(&path).expect("create"))))
                };
                let Some(mut writer) = writer else { continue };
                for piece in data.chunks(1_000 + size % 97) {
                    writer.write_all(piece).expect("write");
                }
                writer.finish().expect("finish").sync_all().expect("sync");
                assert_eq!(std::fs::read(&path).expect("read back"), data, "{size} bytes, {how}");
            }
        }
    }
}
