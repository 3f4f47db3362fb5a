package testnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// TestMain removes the binary the tests built (see testBinary).
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// testBinary builds ./cmd/p2pkey once per test process, and returns its
// path: every testnet of the run uses that one binary (the script gets it
// as TESTNET_BIN), so a long run tests one build from start to end, and
// does not relink for every testnet.
func testBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "p2pkey-bin")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "p2pkey")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/p2pkey")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as testnet/testnet builds it
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/p2pkey: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// script runs testnet/testnet with its state in dir.
type script struct {
	t      testing.TB
	dir    string
	port   int
	closed bool
	// env is added to the script's environment (and so to its daemons').
	env []string
	// bin is the p2pkey binary the script uses (TESTNET_BIN).
	bin string
}

func newScript(t testing.TB, port int) *script {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end testnet test skipped in -short mode")
	}
	dir, err := os.MkdirTemp("", "tn")
	if err != nil {
		t.Fatal(err)
	}
	s := &script{t: t, dir: dir, port: port, bin: testBinary(t)}
	t.Cleanup(s.close)
	return s
}

// close stops every node and deletes the testnet, dumping the daemons' logs
// first if the test failed. It runs at the test's cleanup; calling it earlier
// (one testnet per seed of the chaos test) makes the cleanup a no-op.
func (s *script) close() { s.teardown(s.t.Failed()) }

// teardown is close with the choice of dumping the logs.
func (s *script) teardown(dump bool) {
	if s.closed {
		return
	}
	s.closed = true
	if dump {
		s.dumpLogs()
	}
	s.run("clean")
	s.killStrays()
	os.RemoveAll(s.dir)
}

// killStrays kills, by pid, every daemon still running on this testnet's
// data directories after clean: one that clean could not stop must not
// outlive its test (they are ours: the directory is this test's own).
func (s *script) killStrays() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		cmdline, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(cmdline, []byte("\x00"+filepath.Join(s.dir, "node"))) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err == nil && pid != os.Getpid() {
			s.t.Logf("testnet: pid %d outlived clean; killing it", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (s *script) run(args ...string) (string, error) {
	out, errOut, err := s.runSplit(args...)
	if err != nil {
		return out, fmt.Errorf("%v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	return out, nil
}

// runSplit runs the script and returns its stdout and stderr apart.
func (s *script) runSplit(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command("./testnet", args...)
	cmd.Env = append(os.Environ(), "TESTNET_DIR="+s.dir, fmt.Sprintf("TESTNET_PORT=%d", s.port), "TESTNET_TIMEOUT=90s")
	cmd.Env = append(cmd.Env, "TESTNET_BIN="+s.bin)
	cmd.Env = append(cmd.Env, s.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), errb.String(), fmt.Errorf("testnet %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), nil
}

func (s *script) must(args ...string) string {
	s.t.Helper()
	out, err := s.run(args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

func (s *script) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(s.dir, "node*", "daemon.log"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		s.t.Logf("---- %s (tail)\n%s", l, data)
	}
}

// status is the part of `status --json` the brief fixes.
type status struct {
	PeerID    *string `json:"peer_id"`
	ClusterID *string `json:"cluster_id"`
	Lock      *string `json:"lock"`
	Raft      *struct {
		State  *string `json:"state"`
		Leader *string `json:"leader"`
	} `json:"raft"`
	// Generation keeps raw values so a null is told apart from a missing key.
	Generation map[string]json.RawMessage `json:"generation"`
	Members    []struct {
		PeerID           *string         `json:"peer_id"`
		Status           *string         `json:"status"`
		EscrowGeneration json.RawMessage `json:"escrow_generation"`
		SharesHeld       *int            `json:"shares_held"`
		Threshold        *int            `json:"threshold"`
	} `json:"members"`
}

func (s *script) status(i int) status {
	s.t.Helper()
	out := s.must("p2pkey", fmt.Sprint(i), "status", "--json")
	var st status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("status --json of node %d does not parse: %v\n%s", i, err, out)
	}
	return st
}

func checkFields(t testing.TB, st status) {
	t.Helper()
	if st.PeerID == nil || st.ClusterID == nil || st.Lock == nil || st.Raft == nil || st.Raft.State == nil ||
		st.Raft.Leader == nil || st.Generation["current"] == nil || st.Generation["open"] == nil {
		t.Fatalf("status --json lacks a required field: %+v", st)
	}
	switch *st.Lock {
	case "unlocked", "locked", "unescrowed":
	default:
		t.Fatalf("lock = %q", *st.Lock)
	}
	for _, m := range st.Members {
		if m.PeerID == nil || m.Status == nil || m.EscrowGeneration == nil || m.SharesHeld == nil || m.Threshold == nil {
			t.Fatalf("member row lacks a required field: %+v", m)
		}
	}
}

func activeMembers(st status) int {
	n := 0
	for _, m := range st.Members {
		if *m.Status == "active" {
			n++
		}
	}
	return n
}

// TestTestnetUpKillRestart is acceptance 6 of the node issue: `up -n 3` on a
// clean state exits 0 with three members, `status --json` has the brief's
// fields, and a SIGKILLed node restarts into a healthy cluster.
func TestTestnetUpKillRestart(t *testing.T) {
	s := newScript(t, 4500)
	out := s.must("up", "-n", "3")
	if !strings.Contains(out, "leader") {
		t.Fatalf("up printed no status:\n%s", out)
	}
	leaders := map[string]bool{}
	var cluster string
	for i := 1; i <= 3; i++ {
		st := s.status(i)
		checkFields(t, st)
		if got := activeMembers(st); got != 3 {
			t.Fatalf("node %d sees %d active members, want 3", i, got)
		}
		leaders[*st.Raft.Leader] = true
		if cluster != "" && *st.ClusterID != cluster {
			t.Fatalf("node %d is in cluster %s, node 1 in %s", i, *st.ClusterID, cluster)
		}
		cluster = *st.ClusterID
	}
	if len(leaders) != 1 {
		t.Fatalf("nodes disagree on the leader: %v", leaders)
	}

	before := s.status(2)
	s.must("kill", "2")
	s.must("start", "2")
	s.must("p2pkey", "2", "wait", "--members", "3", "--timeout", "60s")
	after := s.status(2)
	if *after.PeerID != *before.PeerID || *after.ClusterID != *before.ClusterID {
		t.Fatalf("node 2 came back as %s in %s, was %s in %s", *after.PeerID, *after.ClusterID, *before.PeerID, *before.ClusterID)
	}
	for i := 1; i <= 3; i++ {
		s.must("p2pkey", fmt.Sprint(i), "wait", "--members", "3", "--timeout", "60s")
	}
	// `down` keeps the data; `up` again resumes the same cluster.
	s.must("down")
	st, _ := s.run("status")
	if strings.Count(st, "stopped") != 3 {
		t.Fatalf("after down, status shows:\n%s", st)
	}
	s.must("up", "-n", "3")
	if got := *s.status(1).ClusterID; got != cluster {
		t.Fatalf("after down/up the cluster is %s, was %s", got, cluster)
	}
	// `up -n 4` on a running testnet adds one node (continuous sharing issue).
	s.must("up", "-n", "4")
	for i := 1; i <= 4; i++ {
		if got := activeMembers(s.status(i)); got != 4 {
			t.Fatalf("after up -n 4, node %d sees %d active members", i, got)
		}
	}
}

// TestCLIErrors checks the CLI's refusals on a real binary.
func TestCLIErrors(t *testing.T) {
	s := newScript(t, 4550)
	s.must("up", "-n", "1")
	bin := s.bin
	dataDir := filepath.Join(s.dir, "node1")
	run := func(args ...string) (string, int) {
		cmd := exec.Command(bin, append([]string{"--data", dataDir}, args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return string(out), code
	}
	if out, code := run("init"); code == 0 || !strings.Contains(out, "already") {
		t.Fatalf("init over an existing node: exit %d, %s", code, out)
	}
	if out, code := run("remove", "not-a-peer"); code != 2 {
		t.Fatalf("remove with a bad peer ID: exit %d, %s", code, out)
	}
	if out, code := run("status", "--bogus"); code != 2 {
		t.Fatalf("unknown flag: exit %d, %s", code, out)
	}
	if out, code := run("daemon"); code == 0 || !strings.Contains(out, "already running") {
		t.Fatalf("second daemon on the same data dir: exit %d, %s", code, out)
	}
	if out, code := run("daemon", "--bootstrap"); code != 2 || !strings.Contains(out, "already a member") {
		t.Fatalf("--bootstrap on a member: exit %d, %s", code, out)
	}
	other := filepath.Join(s.dir, "nodeX")
	cmd := exec.Command(bin, "--data", other, "status")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no p2pkey daemon is running") {
		t.Fatalf("status with no daemon: %v, %s", err, out)
	}
	if st, _ := os.Stat(filepath.Join(dataDir, "p2pkey.sock")); st == nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v", st)
	}
	if st, _ := os.Stat(filepath.Join(dataDir, "identity.key")); st == nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity mode: %v", st)
	}
}
