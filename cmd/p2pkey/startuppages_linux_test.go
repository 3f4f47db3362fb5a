package main

import (
	"fmt"
	"strings"
	"testing"
)

// written lives in the data segment, a writable mapping of the executable
// that releaseStartupPages must leave alone: its page holds a value the
// file does not.
var written = 7

// Releasing drops the executable's resident read-only pages, keeps what the
// process wrote, and the process goes on running code from the pages it
// dropped.
func TestReleaseStartupPages(t *testing.T) {
	if traced() {
		t.Skip("under a debugger releaseStartupPages does nothing")
	}
	written = 42
	before, after, err := releaseStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("executable resident: %.1f MB before, %.1f MB after", mb(before), mb(after))
	if before <= 0 || after >= before/2 {
		t.Errorf("executable resident %d bytes before and %d after; want under half", before, after)
	}
	if written != 42 {
		t.Errorf("a written global reads %d after the release, want 42", written)
	}
	// Code and read-only data fault back in: parse this process's maps.
	if ms := parseMaps([]byte(fmt.Sprintf("%x-%x r-xp 0 0:0 1 /bin/x\n", 0x1000, 0x2000))); len(ms) != 1 || ms[0].path != "/bin/x" {
		t.Errorf("parseMaps after the release: %+v", ms)
	}
}

// parseMaps skips what it cannot read and keeps paths with spaces.
func TestParseMaps(t *testing.T) {
	in := "00400000-01163000 r-xp 00000000 fe:00 10264839 /tmp/a b/p2pkey\n" +
		"0236a000-043b3000 rw-p 00000000 00:00 0\n" +
		"garbage\n" +
		"zz-01 r--p 0 0:0 1 /x\n" +
		"7f00-7e00 r--p 0 0:0 1 /backwards\n"
	ms := parseMaps([]byte(in))
	if len(ms) != 1 || ms[0].start != 0x400000 || ms[0].end != 0x1163000 || ms[0].perms != "r-xp" || ms[0].path != "/tmp/a b/p2pkey" {
		t.Errorf("parseMaps = %+v", ms)
	}
}

// The real daemon releases its start-up pages once it is unlocked, says so,
// and goes on serving.
func TestDaemonReleasesStartupPages(t *testing.T) {
	data := initNode(t)
	d := startDaemon(t, data, nil, "--bootstrap", "--startup-pages-after", "200ms")
	d.waitMember(t, 1)
	d.waitLog(t, "released the executable's start-up pages")
	line := ""
	for l := range strings.Lines(d.log()) {
		if strings.Contains(l, "released the executable's start-up pages") {
			line = l
		}
	}
	var before, after float64
	if _, err := fmt.Sscanf(line[strings.Index(line, `"resident_before_mb"`):], `"resident_before_mb": %g, "resident_after_mb": %g`, &before, &after); err != nil {
		t.Fatalf("the release line %q: %v", line, err)
	}
	if after >= before/2 {
		t.Errorf("the daemon's executable: %.1f MB resident before the release, %.1f MB after; want under half", before, after)
	}
	// It still answers, from code it faults back in.
	if r := cli(t, data, nil, "status"); r.code != 0 {
		t.Fatalf("status after the release: %v", r)
	}
}
