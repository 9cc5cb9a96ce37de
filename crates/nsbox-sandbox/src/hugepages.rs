//! The zygote's warm memory in transparent huge pages, so each run's fork copies a page table entry per 2 MiB instead of 512.
//!
//! A run copies the zygote's address space (once in the nested shape, its Python; twice
//! in the two-copy shape, its init and then its Python) and tears each copy down; on
//! 4 KiB pages both cost about 1.3 ms per 100 MiB on these machines. Collapsing the warm
//! interpreter's heap into 2 MiB pages once, after its warm-up and before its first run,
//! makes those copies mostly free. A run that writes into a huge page copies only the
//! 4 KiB it touches (the kernel splits the huge page's mapping on that write), so a run's
//! own memory does not grow by the collapse.

use std::fs;

use crate::sys::{self, HUGE_PAGE};

/// What [`collapse_heap`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collapsed {
    /// Bytes of 2 MiB-aligned private anonymous memory offered to the kernel.
    pub eligible: usize,
    /// Of those, bytes in ranges the kernel collapsed.
    pub collapsed: usize,
}

/// The 2 MiB-aligned parts of the private, writable, anonymous mappings (the heap
/// included) in `/proc/self/maps` text: where an interpreter's objects live. Stacks,
/// files and the kernel's special mappings are left as they are.
fn anonymous_ranges(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3).unwrap_or("");
            if !perms.starts_with("rw")
                || !perms.ends_with('p')
                || !(path.is_empty() || path == "[heap]")
            {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            let aligned_start = start.checked_add(HUGE_PAGE - 1)? & !(HUGE_PAGE - 1);
            let aligned_end = end & !(HUGE_PAGE - 1);
            (aligned_end > aligned_start).then(|| (aligned_start, aligned_end - aligned_start))
        })
        .collect()
}

/// Collapses this process's anonymous memory into huge pages, range by range. A range the
/// kernel cannot collapse (no huge page free, an old kernel) stays as it was: this only
/// ever makes forks cheaper.
pub fn collapse_heap() -> Collapsed {
    collapse_heap_except(&[])
}

/// [`collapse_heap`], leaving out the 2 MiB chunks in `shared` (sorted; from
/// [`populated_chunks`]). A zygote forked from another one's warm interpreter shares those
/// chunks' pages with it; collapsing one would copy it whole, where it now copies only the
/// 4 KiB pages it writes.
pub fn collapse_heap_except(shared: &[usize]) -> Collapsed {
    let maps = fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut done = Collapsed::default();
    for (start, len) in unshared_ranges(&anonymous_ranges(&maps), shared) {
        done.eligible += len;
        if sys::collapse_to_huge_pages(start, len).is_ok() {
            done.collapsed += len;
        }
    }
    done
}

/// `ranges` (2 MiB aligned) less the chunks in `shared` (sorted), as ranges.
fn unshared_ranges(ranges: &[(usize, usize)], shared: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &(start, len) in ranges {
        for chunk in (start..start + len).step_by(HUGE_PAGE) {
            if shared.binary_search(&chunk).is_ok() {
                continue;
            }
            match out.last_mut() {
                Some((s, l)) if *s + *l == chunk => *l += HUGE_PAGE,
                _ => out.push((chunk, HUGE_PAGE)),
            }
        }
    }
    out
}

/// The 2 MiB chunks of this process's anonymous memory (those [`collapse_heap`] offers)
/// with at least one page in memory, sorted: right after a fork, the ones it shares.
pub fn populated_chunks() -> Vec<usize> {
    let maps = fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut chunks = Vec::new();
    for (start, len) in anonymous_ranges(&maps) {
        let Ok(pages) = sys::resident_pages(start, len) else {
            continue;
        };
        let per_chunk = HUGE_PAGE / 4096;
        for (i, chunk) in pages.chunks(per_chunk).enumerate() {
            if chunk.iter().any(|p| p & 1 != 0) {
                chunks.push(start + i * HUGE_PAGE);
            }
        }
    }
    chunks.sort_unstable();
    chunks
}

/// Whether this host collapses memory into huge pages on request: tried on a block of this
/// process's own, as a zygote would, for `nsbox check`.
pub fn probe() -> Result<String, String> {
    let mode = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map_err(|e| format!("no transparent huge pages ({e})"))?;
    // black_box: an allocation nothing reads could be left out of an optimised build.
    let block = std::hint::black_box(vec![1u8; 8 << 20]);
    let done = collapse_heap();
    drop(block);
    if done.collapsed == 0 {
        return Err(format!(
            "MADV_COLLAPSE collapsed nothing (Linux 6.1+ needed; transparent_hugepage: {}): \
             zygotes stay in 4 KiB pages, and each run's fork copies more",
            mode.trim()
        ));
    }
    Ok(format!(
        "zygotes collapse their memory after warm-up (transparent_hugepage: {})",
        mode.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_anonymous_writable_memory_is_offered_in_aligned_parts() {
        let maps = "\
00400000-00800000 r-xp 00000000 08:01 123 /usr/bin/python3
00c00000-01300000 rw-p 00000000 00:00 0 [heap]
7f0000100000-7f0000500000 rw-p 00000000 00:00 0
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
7f0000800000-7f0000c00000 rw-s 00000000 00:01 9 /memfd:x (deleted)
7f0001000000-7f0001400000 r--p 00000000 00:00 0
7ffc00000000-7ffc00400000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            anonymous_ranges(maps),
            vec![(0x00c0_0000, 0x60_0000), (0x7f00_0020_0000, 0x20_0000)],
            "the heap rounded in to 2 MiB; a 1 MiB mapping, shared, file, read-only and stack mappings left out"
        );
    }

    #[test]
    fn chunks_with_a_page_in_memory_are_populated() {
        // 8 MiB of fresh anonymous memory (untouched: nothing in memory), then one byte
        // written in one 2 MiB-aligned chunk of it.
        let block = std::hint::black_box(vec![0u8; 8 << 20]);
        let base = block.as_ptr() as usize;
        let touched = base.next_multiple_of(HUGE_PAGE);
        let untouched = touched + HUGE_PAGE;
        // SAFETY: a byte inside `block`, which nothing else refers to while this writes.
        unsafe { std::ptr::write_volatile((touched + 4096) as *mut u8, 1) };
        let chunks = populated_chunks();
        assert!(chunks.contains(&touched), "{touched:#x} not in {chunks:x?}");
        assert!(
            !chunks.contains(&untouched),
            "{untouched:#x} in {chunks:x?}"
        );
        assert!(chunks.windows(2).all(|w| w[0] < w[1]), "sorted");
        drop(block);
    }

    #[test]
    fn shared_chunks_are_cut_out_of_the_ranges_offered() {
        const H: usize = HUGE_PAGE;
        let ranges = [(10 * H, 4 * H), (20 * H, H)];
        assert_eq!(
            unshared_ranges(&ranges, &[11 * H, 20 * H]),
            vec![(10 * H, H), (12 * H, 2 * H)],
            "the second and the last chunk left out, the rest in runs"
        );
        assert_eq!(unshared_ranges(&ranges, &[]), ranges.to_vec());
    }

    #[test]
    fn collapsing_keeps_the_contents_and_puts_memory_in_huge_pages() {
        // 16 MiB of anonymous memory with a pattern in it, in this test process.
        let mut block = vec![0u8; 16 << 20];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let done = collapse_heap();
        assert!(done.eligible >= 14 << 20, "{done:?}");
        assert!(block.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        let smaps = fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        let huge_kib: usize = smaps
            .lines()
            .find(|l| l.starts_with("AnonHugePages:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap();
        assert!(
            done.collapsed > 0 && huge_kib >= 8 << 10,
            "{done:?}, AnonHugePages {huge_kib} KiB (is transparent_hugepage/enabled never?)"
        );
    }
}
