package node

import (
	"bytes"
	"os"
	"testing"
	"time"
)

// TestJoinerAdmittedThenKilledWithoutRaftState is issue 12's "a joiner killed
// mid-join can resume with its own consumed invite", at the worst moment: its
// generation committed (it is an active member, its K escrowed) but it was
// killed before its Raft state reached its disk. Its data directory then holds
// its identity and the consumed invite and no Raft state. Restarted, it must
// come back as a member and unlock with its escrowed K, not be refused with
// "invite already used" (and have its directory cleaned, losing K for good),
// and not serve keys derived from the fresh K its new process made.
func TestJoinerAdmittedThenKilledWithoutRaftState(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	issued, err := nodes[0].Invite(ctxT(t, 10*time.Second), time.Hour)
	tok := issued.Token
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Join = tok
	j := startNode(t, cfg)
	all := append(append([]*Node{}, nodes...), j)
	waitAgree(t, all, 4)
	waitFullCoverage(t, all)
	want := mustKey(t, j, "app")

	// The disk of a joiner killed between its admission and its first Raft
	// write: no Raft state, the consumed invite kept for the resume.
	j.Close()
	if err := os.RemoveAll(cfg.raftDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.joiningPath(), []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Join = "" // the daemon restarts with what is on its disk
	j2 := startNode(t, cfg)
	all[3] = j2
	waitAgree(t, all, 4)
	waitUnlocked(t, j2)
	if got := mustKey(t, j2, "app"); !bytes.Equal(got, want) {
		t.Fatal("the restarted joiner derives another key: it kept the K its new process made instead of its escrowed K")
	}
	if _, err := os.Stat(cfg.joiningPath()); !os.IsNotExist(err) {
		t.Fatalf("the consumed invite is still on disk after the resumed join: %v", err)
	}
	// Everyone still agrees on everyone's keys: no owner's escrow was
	// replaced by a split of the wrong K.
	waitFullCoverage(t, all)
}
