package testnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// natTopology is testnet/nat's layout: which LAN each node sits in.
var natLAN = map[string]string{"pub": "internet", "a1": "lan1", "a2": "lan1", "b1": "lan2", "b2": "lan2", "s1": "symmetric"}

var natNodes = []string{"pub", "a1", "a2", "b1", "b2", "s1"}

// wantConn is the connection type node x should report for member y.
func wantConn(x, y string) []string {
	lx, ly := natLAN[x], natLAN[y]
	switch {
	case lx == ly, lx == "internet", ly == "internet":
		return []string{"direct"}
	case lx == "symmetric" || ly == "symmetric":
		return []string{"relayed"}
	default: // the two port-preserving LANs
		return []string{"hole-punched"}
	}
}

// natScript runs testnet/nat with its state and namespaces private to one test.
type natScript struct {
	t      *testing.T
	dir    string
	prefix string
}

func newNATScript(t *testing.T) *natScript {
	t.Helper()
	if testing.Short() {
		t.Skip("NAT testnet skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("NAT testnet needs root (network namespaces, iptables)")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("NAT testnet needs %s", tool)
		}
	}
	dir, err := os.MkdirTemp("", "nat")
	if err != nil {
		t.Fatal(err)
	}
	s := &natScript{t: t, dir: dir, prefix: fmt.Sprintf("p2pkt%d", os.Getpid()%100000)}
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpLogs()
		}
		if out, err := s.run("down"); err != nil {
			t.Errorf("down: %v\n%s", err, out)
		}
		if left := s.namespaces(); len(left) > 0 {
			t.Errorf("namespaces left after down: %v", left)
		}
		if os.Getenv("NAT_KEEP") != "" {
			t.Logf("NAT_KEEP: daemon logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return s
}

func (s *natScript) run(args ...string) (string, error) {
	cmd := exec.Command("./nat", args...)
	cmd.Env = append(os.Environ(), "NAT_DIR="+s.dir, "NAT_PREFIX="+s.prefix, "NAT_TIMEOUT=180s")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (s *natScript) must(args ...string) string {
	s.t.Helper()
	out, err := s.run(args...)
	if err != nil {
		s.t.Fatalf("testnet/nat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// namespaces lists the network namespaces this test's prefix owns.
func (s *natScript) namespaces() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		s.t.Errorf("ip netns list: %v", err)
		return nil
	}
	var mine []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], s.prefix+"-") {
			mine = append(mine, f[0])
		}
	}
	return mine
}

func (s *natScript) log(node string) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, node, "daemon.log"))
	return string(b)
}

func (s *natScript) dumpLogs() {
	for _, n := range natNodes {
		lines := strings.Split(strings.TrimSpace(s.log(n)), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		s.t.Logf("---- %s daemon.log (last %d lines)\n%s", n, len(lines), strings.Join(lines, "\n"))
	}
}

// natStatus is the part of `p2pkey status --json` this test reads.
type natStatus struct {
	PeerID       string `json:"peer_id"`
	Lock         string `json:"lock"`
	Reachability string `json:"reachability"`
	Raft         struct {
		Leader       string `json:"leader"`
		AppliedIndex uint64 `json:"applied_index"`
	} `json:"raft"`
	Members []struct {
		PeerID     string `json:"peer_id"`
		Status     string `json:"status"`
		Connection string `json:"connection"`
	} `json:"members"`
}

func (s *natScript) status(node string) natStatus {
	s.t.Helper()
	out := s.must("p2pkey", node, "status", "--json")
	var st natStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("%s: status --json: %v\n%s", node, err, out)
	}
	return st
}

func TestNATTestnet(t *testing.T) {
	s := newNATScript(t)

	start := time.Now()
	out, err := s.run("up")
	formation := time.Since(start)
	if err != nil {
		t.Fatalf("testnet/nat up failed after %v: %s (%v)\n%s", formation.Round(time.Second), lastLine(out, "not healthy", "exited", "could not"), err, out)
	}
	t.Logf("NAT cluster formed (6 members, all unlocked) in %v, build included", formation.Round(100*time.Millisecond))

	// Every node sees six active members and is unlocked.
	ids := map[string]string{}
	byID := map[string]string{}
	statuses := map[string]natStatus{}
	for _, n := range natNodes {
		st := s.status(n)
		statuses[n] = st
		ids[n], byID[st.PeerID] = st.PeerID, n
		active := 0
		for _, m := range st.Members {
			if m.Status == "active" {
				active++
			}
		}
		if active != len(natNodes) || st.Lock != "unlocked" {
			t.Errorf("%s: %d active members, lock %q; want %d and unlocked", n, active, st.Lock, len(natNodes))
		}
	}

	// Connection types: LAN mates and the public node direct, the two
	// port-preserving LANs hole-punched, the symmetric NAT relayed. Hole
	// punching and relay upgrades settle within a few connect rounds, so
	// poll before judging.
	var wrong []string
	settle := time.Now()
	deadline := settle.Add(90 * time.Second)
	for {
		wrong = wrong[:0]
		for _, x := range natNodes {
			st := s.status(x)
			statuses[x] = st
			for _, m := range st.Members {
				y := byID[m.PeerID]
				if y == "" || y == x {
					continue
				}
				want := wantConn(x, y)
				if !natContains(want, m.Connection) {
					wrong = append(wrong, fmt.Sprintf("%s→%s: connection %q, want %s", x, y, m.Connection, strings.Join(want, " or ")))
				}
			}
		}
		if len(wrong) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second) // polling six processes' status; hole punches settle in connect rounds
	}
	for _, w := range wrong {
		t.Error(w)
	}
	if len(wrong) == 0 {
		t.Logf("connection types as expected %v after the cluster formed", time.Since(settle).Round(time.Second))
	}
	table := &strings.Builder{}
	for _, x := range natNodes {
		fmt.Fprintf(table, "%-4s reach=%-8s", x, statuses[x].Reachability)
		for _, m := range statuses[x].Members {
			if y := byID[m.PeerID]; y != x {
				fmt.Fprintf(table, " %s=%s", y, m.Connection)
			}
		}
		table.WriteString("\n")
	}
	t.Logf("connection types:\n%s", table)
	if r := statuses["pub"].Reachability; r != "public" {
		t.Errorf("pub: reachability %q, want public (status --json needs a \"reachability\" field from p2p.Reachability)", r)
	}
	for _, n := range []string{"a1", "b1", "s1"} {
		if r := statuses[n].Reachability; r == "public" {
			t.Errorf("%s: reachability %q behind NAT", n, r)
		}
	}

	// mDNS: each LAN pair found each other on the LAN. The node logs
	// "mdns: found peer" with the peer's ID when mDNS reports a member.
	for _, pair := range [][2]string{{"a1", "a2"}, {"a2", "a1"}, {"b1", "b2"}, {"b2", "b1"}} {
		if !mdnsFound(s.log(pair[0]), ids[pair[1]]) {
			t.Errorf("%s did not log \"mdns: found peer\" for %s (%s)", pair[0], pair[1], ids[pair[1]])
		}
	}
	if mdnsFound(s.log("a1"), ids["b1"]) {
		t.Errorf("a1 found b1 by mDNS across NATs")
	}

	// A NAT'd node restarts locked and unlocks through its peers.
	start = time.Now()
	out, err = s.run("restart", "a1")
	restart := time.Since(start)
	if err != nil {
		t.Fatalf("restart a1 failed after %v: %v\n%s", restart.Round(time.Second), err, out)
	}
	t.Logf("NAT'd node a1 restarted and unlocked in %v", restart.Round(100*time.Millisecond))
	if st := s.status("a1"); st.Lock != "unlocked" {
		t.Errorf("a1 after restart: lock %q", st.Lock)
	}
	// Raft, gossip and shares over the relay. Restarting pub (the relay and
	// first leader) moves leadership to a NAT'd node; then some node reaches
	// the leader only through the relay, and must follow its Raft log and
	// hear its gossip that way.
	s.must("restart", "pub")
	for _, n := range natNodes {
		s.must("p2pkey", n, "wait", "--members", fmt.Sprint(len(natNodes)), "--unlocked", "--timeout", "120s")
	}
	leaderID := s.status("pub").Raft.Leader
	leader := byID[leaderID]
	var viaRelay []string
	for _, n := range natNodes {
		if n == leader {
			continue
		}
		for _, m := range s.status(n).Members {
			if m.PeerID == leaderID && m.Connection == "relayed" {
				viaRelay = append(viaRelay, n)
			}
		}
	}
	t.Logf("leader after pub's restart: %s; reached only through the relay by %v", leader, viaRelay)
	if leader == "pub" || len(viaRelay) == 0 {
		t.Logf("leadership stayed on a directly reachable node; Raft and gossip over the relay are not exercised this run")
	} else {
		x := viaRelay[0]
		// Raft: x follows the leader's log through the relay.
		raftDeadline := time.Now().Add(60 * time.Second)
		for {
			lst, xst := s.status(leader), s.status(x)
			if xst.Raft.Leader == leaderID && xst.Raft.AppliedIndex >= lst.Raft.AppliedIndex {
				break
			}
			if time.Now().After(raftDeadline) {
				t.Fatalf("%s does not follow leader %s over the relay: applied %d of %d", x, leader, xst.Raft.AppliedIndex, lst.Raft.AppliedIndex)
			}
			time.Sleep(500 * time.Millisecond) // polling another process's status over its socket
		}
		// Gossip: the leader re-announces at least every 30 s.
		gossipDeadline := time.Now().Add(45 * time.Second)
		for !gossipHeard(s.log(x), leaderID) {
			if time.Now().After(gossipDeadline) {
				t.Fatalf("%s never heard the leader's gossip over the relay", x)
			}
			time.Sleep(time.Second) // polling another process's log file
		}
		t.Logf("%s follows leader %s's Raft log and hears its gossip through the relay", x, leader)
	}
	// Shares: s1 restarts and unlocks with 4 of its 6 shares. Only pub is
	// direct to it, so at least two came through the relay.
	s.must("restart", "s1")
	if st := s.status("s1"); st.Lock != "unlocked" {
		t.Errorf("s1 after restart: lock %q", st.Lock)
	}
	s.must("down")
	if left := s.namespaces(); len(left) > 0 {
		t.Errorf("namespaces left after down: %v", left)
	}
}

// lastLine returns the last line of out that contains one of words, so a
// failure names what the script was waiting for ("3 of 6 members active").
func lastLine(out string, words ...string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		for _, w := range words {
			if strings.Contains(lines[i], w) {
				return strings.TrimSpace(lines[i])
			}
		}
	}
	return "no cluster"
}

func gossipHeard(log, author string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "gossip: heard generation announcement") && strings.Contains(line, author) {
			return true
		}
	}
	return false
}

func mdnsFound(log, id string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "mdns: found peer") && strings.Contains(line, id) {
			return true
		}
	}
	return false
}

func natContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
