package testnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestTestnetKeys is the shares issue end to end with the real binary: five
// nodes escrowed with 5 shares and threshold 3 each; derived keys survive a
// SIGKILL of all five and a cold start with no operator action (rule U2);
// encrypt/decrypt round-trip; a locked node's decrypt exits 3.
func TestTestnetKeys(t *testing.T) {
	s := newScript(t, 4650)
	s.must("up", "-n", "5")
	for i := 1; i <= 5; i++ {
		st := s.status(i)
		checkFields(t, st)
		if *st.Lock != "unlocked" {
			t.Fatalf("node %d lock %q", i, *st.Lock)
		}
	}
	// Coverage tops up to every holder shortly after the commit.
	for i := 1; i <= 5; i++ {
		s.must("p2pkey", fmt.Sprint(i), "wait", "--members", "5", "--unlocked")
	}
	waitCoverage(t, s, 5, 5, 3)

	// `generations --json` shows each generation's state and, for the
	// current one, every owner with its holders (a full matrix).
	var listed struct {
		Generations []struct {
			Number  uint64   `json:"number"`
			State   string   `json:"state"`
			Current bool     `json:"current"`
			Members []string `json:"members"`
			Owners  []struct {
				PeerID  string   `json:"peer_id"`
				Holders []string `json:"holders"`
			} `json:"owners"`
		} `json:"generations"`
	}
	if err := json.Unmarshal([]byte(s.must("p2pkey", "1", "generations", "--json")), &listed); err != nil {
		t.Fatal(err)
	}
	var cur int
	for _, g := range listed.Generations {
		if g.Current {
			cur++
			if g.State != "committed" || len(g.Members) != 5 || len(g.Owners) != 5 {
				t.Fatalf("current generation: %+v", g)
			}
			for _, o := range g.Owners {
				for _, h := range g.Members {
					if !slices.Contains(o.Holders, h) {
						t.Fatalf("generation %d: holder %s lacks owner %s's share", g.Number, h, o.PeerID)
					}
				}
			}
		} else if g.State != "retired" && g.State != "aborted" {
			t.Fatalf("older generation %d is %s once everyone is escrowed in the current one", g.Number, g.State)
		}
	}
	if cur != 1 {
		t.Fatalf("%d current generations", cur)
	}
	if out := s.must("p2pkey", "1", "generations"); !strings.Contains(out, "(current)") || !strings.Contains(out, "OWNER") {
		t.Fatalf("generations table:\n%s", out)
	}

	keys := func() []string {
		var out []string
		for i := 1; i <= 5; i++ {
			out = append(out, strings.TrimSpace(s.must("p2pkey", fmt.Sprint(i), "key", "--purpose", "x")))
		}
		return out
	}
	before := keys()
	for i, k := range before {
		if len(k) != 64 {
			t.Fatalf("node %d key %q is not 32 bytes of hex", i+1, k)
		}
	}

	// Cold restart: SIGKILL all five, start all five.
	for i := 1; i <= 5; i++ {
		s.must("kill", fmt.Sprint(i))
	}
	for i := 1; i <= 5; i++ {
		s.must("start", fmt.Sprint(i))
	}
	for i := 1; i <= 5; i++ {
		s.must("p2pkey", fmt.Sprint(i), "wait", "--unlocked", "--timeout", "90s")
	}
	after := keys()
	for i := range before {
		if before[i] != after[i] {
			t.Fatalf("node %d derived a different key after the cold restart", i+1)
		}
	}

	// encrypt | decrypt round trip on an unlocked node.
	bin := s.bin
	plain := []byte("the quick brown fox\x00\x01\x02")
	enc := exec.Command(bin, "--data", filepath.Join(s.dir, "node2"), "encrypt")
	enc.Stdin = bytes.NewReader(plain)
	ct, err := enc.Output()
	if err != nil || !bytes.HasPrefix(ct, []byte("age-encryption.org/v1")) {
		t.Fatalf("encrypt: %v, %q", err, ct)
	}
	dec := exec.Command(bin, "--data", filepath.Join(s.dir, "node2"), "decrypt")
	dec.Stdin = bytes.NewReader(ct)
	got, err := dec.Output()
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("decrypt: %v, %q", err, got)
	}
	// Another node's key cannot open it.
	dec = exec.Command(bin, "--data", filepath.Join(s.dir, "node3"), "decrypt")
	dec.Stdin = bytes.NewReader(ct)
	if out, err := dec.CombinedOutput(); err == nil {
		t.Fatalf("node 3 decrypted node 2's file: %s", out)
	}

	// A locked node: stop three, restart node 2; decrypt and key exit 3.
	for _, i := range []string{"3", "4", "5"} {
		s.must("stop", i)
	}
	s.must("kill", "2")
	s.must("start", "2")
	dec = exec.Command(bin, "--data", filepath.Join(s.dir, "node2"), "decrypt")
	dec.Stdin = bytes.NewReader(ct)
	out, err := dec.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("decrypt on a locked node: %v, %s", err, out)
	}
	cmd := exec.Command(bin, "--data", filepath.Join(s.dir, "node2"), "key", "--purpose", "x")
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), "locked") {
		t.Fatalf("key on a locked node: %v, %s", err, out)
	}
	// Derived keys never reach the data directories.
	for i := 1; i <= 5; i++ {
		dir := filepath.Join(s.dir, fmt.Sprintf("node%d", i))
		filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() || info.Mode()&os.ModeSocket != 0 {
				return nil
			}
			data, _ := os.ReadFile(path)
			for _, k := range before {
				if bytes.Contains(data, []byte(k)) {
					t.Errorf("%s contains a derived key", path)
				}
			}
			return nil
		})
	}
}

// waitCoverage polls node 1 until every member holds want shares with the
// given threshold.
func waitCoverage(t *testing.T, s *script, members, want, threshold int) {
	t.Helper()
	for try := 0; ; try++ {
		st := s.status(1)
		ok := len(st.Members) == members
		for _, m := range st.Members {
			ok = ok && *m.SharesHeld == want && *m.Threshold == threshold
		}
		if ok {
			return
		}
		if try > 500 {
			t.Fatalf("coverage never reached %d shares with threshold %d: %+v", want, threshold, st.Members)
		}
		s.must("p2pkey", "1", "wait", "--timeout", "5s") // paces the poll on the daemon, not a sleep
	}
}
