//go:build linux

package testnet

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// benchPort is the TESTNET_PORT of the benchmark's testnet, apart from
	// the tests' 4500 and 4550.
	benchPort = 4600
	// benchNodes is the size of the idle testnet.
	benchNodes = 3
	// settle is how long the daemons run after `up` reports a healthy
	// cluster before the window opens, so that the tail of the join work
	// (share pushes, receipts, the generation commit) stays out of it.
	settle = 5 * time.Second
	// idleWindow is how long the daemons idle before they are measured.
	idleWindow = 10 * time.Second
	// userHZ is the unit of utime and stime in /proc/PID/stat. It is 100 on
	// every Linux architecture Go supports, whatever the kernel's HZ.
	userHZ = 100
)

// BenchmarkIdleDaemonRSS brings up a three-node testnet with the real binary,
// lets it settle, then idle for idleWindow, and reports each daemon's resident memory
// (VmRSS: rss-MB-median, rss-MB-max; its peak VmHWM: hwm-MB-max) and the CPU
// it used while idle (utime+stime over the window, per second of wall time:
// cpu-ms/s is the mean over the daemons, cpu-ms/s-max the busiest). Target:
// 40 MB or less per daemon.
//
// The measurement runs once per call and ignores b.N; run it with
//
//	go test ./testnet -run '^$' -bench BenchmarkIdleDaemonRSS -benchtime 1x -count 1
func BenchmarkIdleDaemonRSS(b *testing.B) {
	s := newScript(b, benchPort)
	s.must("up", "-n", strconv.Itoa(benchNodes))
	time.Sleep(settle) // a benchmark's settling window

	pids := make([]int, benchNodes)
	cpu0 := make([]time.Duration, benchNodes)
	for i := range benchNodes {
		pids[i] = daemonPID(b, s.dir, i+1)
		cpu0[i] = procCPU(b, pids[i])
	}
	b.ResetTimer()
	start := time.Now()
	time.Sleep(idleWindow) // the measured idle window
	elapsed := time.Since(start)
	b.StopTimer()

	var rss, hwm, cpu []float64
	for i, pid := range pids {
		used := procCPU(b, pid) - cpu0[i]
		st := procStatus(b, pid)
		r, h := st["VmRSS"]/(1<<20), st["VmHWM"]/(1<<20)
		c := float64(used.Milliseconds()) / elapsed.Seconds()
		b.Logf("node %d (pid %d): VmRSS %.1f MB, VmHWM %.1f MB, %.2f cpu-ms/s", i+1, pid, r, h, c)
		rss, hwm, cpu = append(rss, r), append(hwm, h), append(cpu, c)
	}
	b.ReportMetric(median(rss), "rss-MB-median")
	b.ReportMetric(slices.Max(rss), "rss-MB-max")
	b.ReportMetric(slices.Max(hwm), "hwm-MB-max")
	b.ReportMetric(mean(cpu), "cpu-ms/s")
	b.ReportMetric(slices.Max(cpu), "cpu-ms/s-max")
}

// daemonPID reads node i's pid file and checks that the process is a live
// p2pkey daemon.
func daemonPID(b testing.TB, dir string, i int) int {
	b.Helper()
	data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node%d", i), "daemon.pid"))
	if err != nil {
		b.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		b.Fatalf("node %d: daemon.pid: %v", i, err)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		b.Fatalf("node %d: pid %d: %v", i, pid, err)
	}
	if got := strings.TrimSpace(string(comm)); got != "p2pkey" {
		b.Fatalf("node %d: pid %d is %q, not the p2pkey daemon", i, pid, got)
	}
	return pid
}

// procCPU returns the user plus system CPU time pid has used.
func procCPU(b testing.TB, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// fields 3 onwards follow the last ')'. utime and stime are fields 14
	// and 15.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		b.Fatalf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[end+1:]))
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	var ticks int64
	for _, field := range f[11:13] {
		n, err := strconv.ParseInt(field, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ
}

// procStatus returns the "kB" fields of /proc/PID/status, in bytes.
func procStatus(b testing.TB, pid int) map[string]float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]float64{}
	for line := range strings.Lines(string(data)) {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		if n, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[key] = n * 1024
		}
	}
	if _, ok := out["VmRSS"]; !ok {
		b.Fatalf("/proc/%d/status has no VmRSS", pid)
	}
	return out
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func mean(v []float64) float64 {
	var sum float64
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}
