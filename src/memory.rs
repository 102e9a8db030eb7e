//! Gives back memory an idle daemon no longer needs, at the end of a cycle that did work.
//!
//! Two things keep a caught-up daemon at its peak size (BENCHMARKS.md, "Idle"):
//! - freed heap: glibc raises its trim threshold with the largest freed block, so the megabytes of
//!   chunk buffers a catch-up freed stay in the process; `malloc_trim(0)` returns them;
//! - code pages: start-up, TLS, HTTP, zstd, JSON and regex code touch most of the binary's text,
//!   and the kernel maps 64 KiB around every page fault, so nearly all of it stays mapped although
//!   an idle cycle runs a small part of it. `madvise(MADV_DONTNEED)` unmaps those pages; they stay
//!   in the page cache (shared with every other daemon), and the few an idle cycle needs are mapped
//!   again by a minor fault, without I/O while the page cache keeps them.
//!
//! Invariants:
//! - only segments the ELF program headers load **without write permission** are unmapped, so no
//!   page this process ever changed (relocated data, RELRO, `.data`, `.bss`, heap, stacks) is ever
//!   dropped: what comes back on the next touch is byte for byte what was there;
//! - only objects loaded from a file (the executable, and libraries with an absolute path) are
//!   touched, never the vDSO;
//! - on other platforms both steps are no-ops.

/// Returns freed heap to the system and unmaps the code and read-only data pages of this process
/// (see the module doc). Call it when a cycle that initialised or sent something ends (a cycle
/// ends when nothing is left to send), not after idle cycles, which would only pay the faults
/// that map the pages back.
pub fn release_idle_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    linux::release();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod linux {
    use std::ffi::CStr;

    pub(super) fn release() {
        // SAFETY: malloc_trim only walks and releases glibc's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
        // The ranges are found afresh each time and dropped from inside the iteration: glibc
        // holds its loader lock meanwhile, so no object can be unloaded (and its addresses
        // reused by another mapping) between finding a range and dropping its pages.
        for_each_read_only_segment(&mut |start, len| {
            // SAFETY: the range lies inside a mapping of a non-writable PT_LOAD segment of a
            // loaded object (module invariants): dropping its pages only makes the next access
            // read them from the file again, which holds the same bytes.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED);
            }
        });
    }

    type Visit<'a> = &'a mut dyn FnMut(usize, usize);

    /// Calls `visit(start, len)` for the whole pages of every read-only loaded segment.
    fn for_each_read_only_segment(mut visit: Visit) {
        // SAFETY: the callback only reads the `dl_phdr_info` glibc passes for the duration of
        // the call, and `data` points to `visit`, alive for the whole iteration.
        unsafe {
            libc::dl_iterate_phdr(
                Some(segments),
                &mut visit as *mut Visit as *mut libc::c_void,
            );
        }
    }

    unsafe extern "C" fn segments(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        let info = &*info;
        let visit = &mut *(data as *mut Visit);
        // The executable comes first with an empty name; libraries loaded from files have
        // absolute paths; the vDSO has neither.
        let name = if info.dlpi_name.is_null() {
            &[][..]
        } else {
            CStr::from_ptr(info.dlpi_name).to_bytes()
        };
        let from_file = name.is_empty() || name.starts_with(b"/");
        if !from_file || info.dlpi_phdr.is_null() {
            return 0;
        }
        let page = page_size();
        let headers = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            let end = start + h.p_memsz as usize;
            if let Some((s, l)) = inner_pages(start, end, page) {
                visit(s, l);
            }
        }
        0
    }

    fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as usize
        } else {
            4096
        }
    }

    /// The whole pages inside `[start, end)`: a page shared with a neighbouring (possibly
    /// writable) segment is left alone.
    pub(super) fn inner_pages(start: usize, end: usize, page: usize) -> Option<(usize, usize)> {
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        (last > first).then(|| (first, last - first))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn inner_pages_round_inwards() {
            assert_eq!(inner_pages(4096, 3 * 4096, 4096), Some((4096, 2 * 4096)));
            assert_eq!(
                inner_pages(4097, 3 * 4096 + 5, 4096),
                Some((2 * 4096, 4096))
            );
            assert_eq!(inner_pages(4097, 2 * 4096 + 5, 4096), None);
        }

        /// Every mapping a range touches must hold no anonymous (changed, copied-on-write) page:
        /// that is what makes dropping its pages lossless.
        fn read_only_segments() -> Vec<(usize, usize)> {
            let mut out = Vec::new();
            for_each_read_only_segment(&mut |s, l| out.push((s, l)));
            out
        }

        #[test]
        fn ranges_cover_the_code_and_no_changed_page() {
            let ranges = read_only_segments();
            let here = ranges_cover_the_code_and_no_changed_page as fn() as usize;
            assert!(
                ranges.iter().any(|&(s, l)| (s..s + l).contains(&here)),
                "this function's code lies in no read-only segment: {ranges:x?}"
            );
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut current: Option<(usize, usize, String)> = None;
            for line in smaps.lines() {
                let first = line.split_whitespace().next().unwrap_or("");
                if let Some((a, b)) = first.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        current = Some((a, b, line.to_string()));
                        continue;
                    }
                }
                let Some(kib) = line.strip_prefix("Anonymous:") else {
                    continue;
                };
                let (a, b, header) = current.as_ref().unwrap();
                let overlaps = ranges.iter().any(|&(s, l)| s < *b && *a < s + l);
                assert!(
                    !overlaps || kib.trim() == "0 kB",
                    "a released range overlaps a mapping with changed pages: {header}"
                );
            }
        }

        #[test]
        fn released_code_still_runs_and_data_is_intact() {
            let before: Vec<u64> = (0..10_000).map(|i| i * 7).collect();
            let text = format!("{before:?}");
            super::super::release_idle_memory();
            super::super::release_idle_memory();
            let after: Vec<u64> = (0..10_000).map(|i| i * 7).collect();
            assert_eq!(before, after);
            assert_eq!(text, format!("{after:?}"));
        }
    }
}
