package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bin is the p2pkey binary built from this package for the tests that run
// it end to end.
var bin string

func TestMain(m *testing.M) {
	if helperMain() {
		return
	}
	dir, err := os.MkdirTemp("", "p2pkey-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Tests run the binary, and this test binary as a helper, as other
	// users too.
	os.Chmod(dir, 0o755)
	helperBin = filepath.Join(dir, "helper.test")
	if err := copyFile(os.Args[0], helperBin, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "copy the test binary:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "p2pkey")
	build := exec.Command("go", "build", "-buildvcs=auto", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build p2pkey:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one finished run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cli runs the binary on dataDir with stdin (nil: /dev/null).
func cli(t *testing.T, dataDir string, stdin io.Reader, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--data", dataDir}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run p2pkey %v: %v", args, err)
	}
	return r
}

// must runs the binary and fails the test unless it exits 0.
func must(t *testing.T, dataDir string, args ...string) string {
	t.Helper()
	r := cli(t, dataDir, nil, args...)
	if r.code != 0 {
		t.Fatalf("p2pkey %s: %v", strings.Join(args, " "), r)
	}
	return r.stdout
}

// dataDir returns a fresh, short data directory path (a unix socket path
// must stay short), not yet created.
func dataDir(t *testing.T) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "pk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	return filepath.Join(parent, "d")
}

// initNode makes an initialised data directory listening on loopback.
func initNode(t *testing.T) string {
	t.Helper()
	d := dataDir(t)
	must(t, d, "init", "--listen", "/ip4/127.0.0.1/tcp/0")
	return d
}

// daemon is a running `p2pkey daemon`.
type daemon struct {
	cmd    *exec.Cmd
	data   string
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
}

func (d *daemon) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.Write(p)
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// startDaemon starts `p2pkey daemon ARGS` on dataDir with stdin and stops
// it (SIGTERM, then SIGKILL) when the test ends.
func startDaemon(t *testing.T, data string, stdin io.Reader, args ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, data, nil, stdin, args...)
}

// startDaemonEnv is startDaemon with env added to the daemon's environment.
func startDaemonEnv(t *testing.T, data string, env []string, stdin io.Reader, args ...string) *daemon {
	t.Helper()
	full := append([]string{"--data", data, "daemon", "--no-mdns", "--raft-heartbeat", "300ms"}, args...)
	d := &daemon{cmd: exec.Command(bin, full...), data: data, done: make(chan struct{})}
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdin, d.cmd.Stdout, d.cmd.Stderr = stdin, d, d
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("daemon %s log:\n%s", data, tail(d.log(), 3000))
		}
	})
	return d
}

// stop sends SIGTERM and waits for the daemon to exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon on %s did not stop on SIGTERM", d.data)
	}
}

// waitMember waits until the daemon is an active voting member that knows
// the leader, or fails the test if the daemon exits first.
func (d *daemon) waitMember(t *testing.T, members int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("daemon on %s exited: %v\n%s", d.data, d.cmd.ProcessState, tail(d.log(), 3000))
		default:
		}
		r := cli(t, d.data, nil, "wait", "--members", fmt.Sprint(members), "--timeout", "2s")
		if r.code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon on %s not a member after 60s: %v", d.data, r)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// statusOf is the part of `status --json` these tests read.
type statusOf struct {
	PeerID  string `json:"peer_id"`
	Members []struct {
		PeerID string `json:"peer_id"`
		Status string `json:"status"`
	} `json:"members"`
}

func status(t *testing.T, data string) statusOf {
	t.Helper()
	var st statusOf
	out := must(t, data, "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func (st statusOf) memberStatus(id string) string {
	for _, m := range st.Members {
		if m.PeerID == id {
			return m.Status
		}
	}
	return ""
}
