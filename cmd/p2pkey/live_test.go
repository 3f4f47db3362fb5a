package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// cmdline returns the daemon's command line as the kernel shows it to every
// local user (ps reads the same file).
func (d *daemon) cmdline(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.cmd.Process.Pid))
	if err != nil {
		t.Skipf("no /proc on this system: %v", err)
	}
	return strings.ReplaceAll(string(data), "\x00", " ")
}

func invite(t *testing.T, data string) string {
	t.Helper()
	tok := strings.TrimSpace(must(t, data, "invite"))
	if !strings.HasPrefix(tok, "p2pkey-invite-") {
		t.Fatalf("invite printed %q", tok)
	}
	return tok
}

// TestLiveCluster runs the real binary as four daemons on loopback:
//   - joins with --join-file and --join - leave the invite out of
//     /proc/PID/cmdline, and --join TOKEN still works but warns (and its
//     token is there, which shows the check can see one);
//   - remove and leave refuse without a terminal unless --yes (exit 2),
//     even with "yes" piped in, and change nothing;
//   - remove --yes prints the vote result, and both warn when the cluster
//     goes below 3 members; status warns with fewer than 3.
func TestLiveCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four daemons")
	}
	n1, n2, n3, n4 := initNode(t), initNode(t), initNode(t), initNode(t)
	d1 := startDaemon(t, n1, nil, "--bootstrap")
	d1.waitMember(t, 1)

	// --join-file: the invite is read from a file.
	tok2 := invite(t, n1)
	file := filepath.Join(filepath.Dir(n2), "invite.txt")
	if err := os.WriteFile(file, []byte(tok2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := startDaemon(t, n2, nil, "--join-file", file)
	d2.waitMember(t, 2)
	if cl := d2.cmdline(t); strings.Contains(cl, tok2) || !strings.Contains(cl, "--join-file") {
		t.Fatalf("--join-file daemon's command line: %s", cl)
	}

	// --join -: the invite is one line of stdin.
	tok3 := invite(t, n1)
	d3 := startDaemon(t, n3, strings.NewReader(tok3+"\n"), "--join", "-")
	d3.waitMember(t, 3)
	if cl := d3.cmdline(t); strings.Contains(cl, tok3) || !strings.Contains(cl, "--join -") {
		t.Fatalf("--join - daemon's command line: %s", cl)
	}
	for _, d := range []*daemon{d2, d3} {
		if strings.Contains(d.log(), "visible") {
			t.Fatalf("daemon on %s warned about ps although its invite is not on the command line:\n%s", d.data, d.log())
		}
	}

	// --join TOKEN: still works, with a warning; the token is in cmdline.
	tok4 := invite(t, n1)
	d4 := startDaemon(t, n4, nil, "--join", tok4)
	d4.waitMember(t, 4)
	if !strings.Contains(d4.cmdline(t), tok4) {
		t.Fatal("the check cannot see a token on the command line")
	}
	if l := d4.log(); !strings.Contains(l, "visible to every local user in the process list") || !strings.Contains(l, "--join-file") {
		t.Fatalf("--join TOKEN printed no warning:\n%s", l)
	}
	if w := clusterLine(must(t, n1, "status")); w != "" {
		t.Fatalf("4 members, yet status warns: %s", w)
	}

	// remove without --yes and without a terminal: refused, nothing done.
	id3, id4 := status(t, n3).PeerID, status(t, n4).PeerID
	for name, in := range map[string]*strings.Reader{"piped yes": strings.NewReader("yes\n"), "/dev/null": nil} {
		var r result
		if in == nil {
			r = cli(t, n1, nil, "remove", id4)
		} else {
			r = cli(t, n1, in, "remove", id4)
		}
		if r.code != exitUsage || !strings.Contains(r.stderr, "--yes") || !strings.Contains(r.stderr, "suspends") {
			t.Fatalf("remove with %s on stdin: %v", name, r)
		}
	}
	if got := status(t, n1).memberStatus(id4); got != "active" {
		t.Fatalf("a refused remove changed the target to %q", got)
	}

	// remove --yes --json: the vote result; 3 others remain, no warning.
	r := cli(t, n1, nil, "remove", "--yes", "--json", id4)
	if r.code != 0 || strings.Contains(r.stderr, "warning") {
		t.Fatalf("remove --yes: %v", r)
	}
	var vote node.VoteResult
	if err := json.Unmarshal([]byte(r.stdout), &vote); err != nil {
		t.Fatalf("remove --json: %v\n%s", err, r.stdout)
	}
	if vote.Target.String() != id4 || vote.Kind != "remove" || vote.Votes < 1 || vote.Final != (vote.Status == "removed") {
		t.Fatalf("vote result %+v", vote)
	}
	if got := status(t, n1).memberStatus(id4); got != vote.Status || (got != "suspended" && got != "removed") {
		t.Fatalf("after one remove vote the target is %q, the vote said %q", got, vote.Status)
	}

	// Taking the cluster to 2 members warns, and status warns afterwards.
	r = cli(t, n1, nil, "remove", "--yes", id3)
	if r.code != 0 || !strings.Contains(r.stderr, "with 2 members, one node down blocks the other's unlock") {
		t.Fatalf("remove to 2 members: %v", r)
	}
	if line := strings.TrimSpace(r.stdout); line != id3+": removed (final)" && !strings.HasPrefix(line, id3+": suspended (remove votes: ") {
		t.Fatalf("remove printed %q", line)
	}
	if w := clusterLine(must(t, n1, "status")); w != "only 2 members: one node down blocks the other's unlock" {
		t.Fatalf("status with 2 members warns %q", w)
	}

	// leave: refused without --yes, saying what is lost; then done.
	r = cli(t, n2, strings.NewReader("y\n"), "leave")
	if r.code != exitUsage || !strings.Contains(r.stderr, "K will be unrecoverable once it leaves; files encrypted under it are lost") ||
		!strings.Contains(r.stderr, "a cluster of one cannot protect K") || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("leave without --yes: %v", r)
	}
	if got := status(t, n1).memberStatus(status(t, n2).PeerID); got != "active" {
		t.Fatalf("a refused leave changed node 2 to %q", got)
	}
	r = cli(t, n2, nil, "leave", "--yes")
	if r.code != 0 || !strings.Contains(r.stdout, "left the cluster") {
		t.Fatalf("leave --yes: %v", r)
	}
	select {
	case <-d2.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not exit after leaving")
	}
	if w := clusterLine(must(t, n1, "status")); w != "only 1 member: a cluster of one cannot protect K: invite a second node" {
		t.Fatalf("status with 1 member warns %q", w)
	}
}

// clusterLine returns the warning line of `status`, or "".
func clusterLine(status string) string {
	for _, l := range strings.Split(status, "\n") {
		if w, ok := strings.CutPrefix(l, "warning:"); ok {
			return strings.TrimSpace(w)
		}
	}
	return ""
}
