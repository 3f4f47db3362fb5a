package idle

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100
// on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// wireOverhead is what a LAN adds to each TCP segment: Ethernet (14 bytes),
// IPv4 (20) and TCP with the timestamp option (32).
const wireOverhead = 66

// procCPU returns the CPU time pid has used, user and system, including its
// threads that have exited.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// procRSS returns VmRSS of pid in bytes, and RssAnon, the part of it that
// is the process's own (heap, stacks) rather than pages of files it maps:
// its executable's pages count in every daemon's VmRSS but are in memory
// once for all of them.
func procRSS(pid int) (rss, anon int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != "VmRSS" && name != "RssAnon" {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s %q", pid, name, v)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %w", pid, name, err)
		}
		if name == "VmRSS" {
			rss = kb << 10
		} else {
			anon = kb << 10
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS or RssAnon", pid)
	}
	return rss, anon, nil
}

// sockCount is the tcp_info counters of one socket.
type sockCount struct {
	sent, recv, segsOut, segsIn uint64
}

func (c sockCount) sub(o sockCount) sockCount {
	return sockCount{c.sent - o.sent, c.recv - o.recv, c.segsOut - o.segsOut, c.segsIn - o.segsIn}
}

func (c sockCount) add(o sockCount) sockCount {
	return sockCount{c.sent + o.sent, c.recv + o.recv, c.segsOut + o.segsOut, c.segsIn + o.segsIn}
}

// wireOut and wireIn are the bytes a LAN would carry: payload and headers.
func (c sockCount) wireOut() uint64 { return c.sent + wireOverhead*c.segsOut }
func (c sockCount) wireIn() uint64  { return c.recv + wireOverhead*c.segsIn }

var (
	ssPID     = regexp.MustCompile(`pid=(\d+)`)
	ssCounter = regexp.MustCompile(`\b(bytes_sent|bytes_received|segs_out|segs_in):(\d+)`)
)

// tcpSockets reads every TCP socket on the machine with `ss -tinp` and
// returns the counters of those owned by the given PIDs, by PID and then by
// "local peer" address pair.
func tcpSockets(pids map[int]bool) (map[int]map[string]sockCount, error) {
	out, err := exec.Command("ss", "-H", "-t", "-i", "-n", "-p").Output()
	if err != nil {
		return nil, fmt.Errorf("ss: %w", err)
	}
	return parseSS(out, pids)
}

// parseSS parses `ss -H -t -i -n -p`: a line per socket (state, queues,
// local and peer address, users:(...)), then an indented line of tcp_info.
func parseSS(out []byte, pids map[int]bool) (map[int]map[string]sockCount, error) {
	res := make(map[int]map[string]sockCount)
	var (
		key   string
		owner []int
	)
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\n")
		if line == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			f := strings.Fields(line)
			owner = owner[:0]
			if len(f) < 5 {
				key = ""
				continue
			}
			key = f[3] + " " + f[4]
			for _, m := range ssPID.FindAllStringSubmatch(line, -1) {
				if p, err := strconv.Atoi(m[1]); err == nil && pids[p] {
					owner = append(owner, p)
				}
			}
			continue
		}
		if key == "" || len(owner) == 0 {
			continue
		}
		var c sockCount
		for _, m := range ssCounter.FindAllStringSubmatch(line, -1) {
			v, err := strconv.ParseUint(m[2], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("ss: %q: %w", m[0], err)
			}
			switch m[1] {
			case "bytes_sent":
				c.sent = v
			case "bytes_received":
				c.recv = v
			case "segs_out":
				c.segsOut = v
			case "segs_in":
				c.segsIn = v
			}
		}
		for _, p := range owner {
			if res[p] == nil {
				res[p] = make(map[string]sockCount)
			}
			res[p][key] = c
		}
		key = ""
	}
	return res, nil
}

// udpSockets counts the UDP sockets each of the PIDs holds. Their traffic
// is not counted, so the benchmark says when there are any.
func udpSockets(pids map[int]bool) (map[int]int, error) {
	out, err := exec.Command("ss", "-H", "-u", "-a", "-n", "-p").Output()
	if err != nil {
		return nil, fmt.Errorf("ss: %w", err)
	}
	res := make(map[int]int)
	for line := range strings.Lines(string(out)) {
		for _, m := range ssPID.FindAllStringSubmatch(line, -1) {
			if p, err := strconv.Atoi(m[1]); err == nil && pids[p] {
				res[p]++
			}
		}
	}
	return res, nil
}

func TestProcReaders(t *testing.T) {
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("ss (iproute2) is not installed")
	}
	pid := os.Getpid()
	before, err := procCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the tick counter moves.
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for {
		for i := range 1_000_000 {
			x += i
		}
		after, err := procCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("utime+stime did not move in 5 s of busy work (%d)", x)
		}
	}
	if rss, anon, err := procRSS(pid); err != nil || rss < 1<<20 || anon <= 0 || anon > rss {
		t.Fatalf("VmRSS = %d, RssAnon = %d, %v; want at least 1 MiB, and 0 < RssAnon <= VmRSS", rss, anon, err)
	}

	// A loopback connection of this process: its counters must show what
	// went through it, in both directions.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := <-accepted
	if srv == nil {
		t.Fatal("accept failed")
	}
	defer srv.Close()
	const n = 5000
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(srv, buf); err != nil {
		t.Fatal(err)
	}
	socks, err := tcpSockets(map[int]bool{pid: true})
	if err != nil {
		t.Fatal(err)
	}
	key := c.LocalAddr().String() + " " + c.RemoteAddr().String()
	got, ok := socks[pid][key]
	if !ok {
		t.Fatalf("ss shows no socket %q for pid %d: %v", key, pid, socks[pid])
	}
	if got.sent != n || got.segsOut == 0 {
		t.Fatalf("client socket counters %+v, want bytes_sent %d", got, n)
	}
	back := socks[pid][srv.LocalAddr().String()+" "+srv.RemoteAddr().String()]
	if back.recv != n {
		t.Fatalf("server socket counters %+v, want bytes_received %d", back, n)
	}
}

func TestParseSS(t *testing.T) {
	out := []byte("ESTAB 0      0      127.0.0.1:33383 127.0.0.1:39015 users:((\"p2pkey\",pid=600,fd=17))\n" +
		"\t bbr wscale:10,10 rto:204 bytes_sent:128169 bytes_acked:128169 bytes_received:90007 segs_out:491 segs_in:488 data_segs_out:464\n" +
		"ESTAB 0      0      127.0.0.1:1 127.0.0.1:2 users:((\"other\",pid=7,fd=1))\n" +
		"\t bytes_sent:1 bytes_received:1 segs_out:1 segs_in:1\n")
	got, err := parseSS(out, map[int]bool{600: true})
	if err != nil {
		t.Fatal(err)
	}
	want := sockCount{sent: 128169, recv: 90007, segsOut: 491, segsIn: 488}
	if len(got) != 1 || got[600]["127.0.0.1:33383 127.0.0.1:39015"] != want {
		t.Fatalf("parseSS = %+v, want pid 600 only with %+v", got, want)
	}
}
