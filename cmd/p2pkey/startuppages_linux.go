package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// releaseStartupPages drops this process's mappings of the executable's
// read-only pages (code, read-only data, the runtime's tables) with
// madvise(MADV_DONTNEED), and reports the executable's resident bytes before
// and after.
//
// A daemon touches most of its executable while it starts (package
// initialisers, protobuf and libp2p set-up, fx's reflection), and the kernel
// maps 64 KiB around each fault: idle, a 25-member daemon had 29 MB of its
// 32 MB of code and read-only data resident, though it used about 11 MB in a
// minute (measured with /proc/PID/clear_refs). The pages are clean copies of
// the file, so dropping the mapping loses nothing: a page still in use faults
// back from the page cache (a minor fault), and the rest become the first
// pages the kernel reclaims under pressure rather than pages it protects
// because a process maps them. Writable mappings (the data segment, whose
// pages may have been written) are never touched.
//
// It does nothing under a debugger (a tracer's breakpoints live in private
// copies of code pages, which MADV_DONTNEED would discard).
func releaseStartupPages() (before, after int64, err error) {
	if traced() {
		return 0, 0, errTraced
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	before, err = executableRSS(exe)
	if err != nil {
		return 0, 0, err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, 0, err
	}
	for _, m := range parseMaps(maps) {
		if m.path != exe || strings.Contains(m.perms, "w") || !strings.HasPrefix(m.perms, "r") {
			continue
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_DONTNEED); e != 0 {
			return before, before, fmt.Errorf("madvise %x-%x: %w", m.start, m.end, e)
		}
	}
	after, err = executableRSS(exe)
	return before, after, err
}

var errTraced = fmt.Errorf("a debugger is attached")

// traced reports whether a tracer (a debugger) is attached to this process.
func traced() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("TracerPid:")); ok {
			return string(bytes.TrimSpace(v)) != "0"
		}
	}
	return false
}

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end uintptr
	perms      string
	path       string
}

// parseMaps reads /proc/PID/maps: the mappings of files. Anonymous mappings
// and lines it cannot read are skipped.
func parseMaps(b []byte) []mapping {
	var out []mapping
	for line := range bytes.Lines(b) {
		if m, ok := parseMapLine(string(line)); ok && m.path != "" {
			out = append(out, m)
		}
	}
	return out
}

// parseMapLine reads one mapping line of /proc/PID/maps or smaps (path ""
// for an anonymous mapping). smaps' field lines ("Rss: 12 kB") are not
// mapping lines.
func parseMapLine(line string) (mapping, bool) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return mapping{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return mapping{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapping{}, false
	}
	return mapping{start: uintptr(start), end: uintptr(end), perms: f[1], path: strings.Join(f[5:], " ")}, true
}

// executableRSS sums the resident bytes of this process's mappings of exe
// (all of them, the writable data segment included).
func executableRSS(exe string) (int64, error) {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	var total int64
	in := false
	for line := range bytes.Lines(b) {
		if m, ok := parseMapLine(string(line)); ok {
			in = m.path == exe
			continue
		}
		if f := strings.Fields(string(line)); in && len(f) >= 2 && f[0] == "Rss:" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				total += kb << 10
			}
		}
	}
	return total, nil
}
