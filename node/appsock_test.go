//go:build linux

package node

import (
	"bytes"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/internal/testkit"
)

func TestParseAppRule(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "uid:1000=app/*", want: "uid:1000=app/*"},
		{in: "gid:990=web/*, cache", want: "gid:990=web/*,cache"},
		{in: "uid:0=*", want: "uid:0=*"},
		{in: "user:root=a", want: "uid:0=a"},
		{in: "group:root=a,b/*", want: "gid:0=a,b/*"},
		{in: "uid:1000", err: "want KIND:ID="},
		{in: "1000=app", err: "want KIND:ID="},
		{in: "uid:=app", err: "want KIND:ID="},
		{in: "pid:1=app", err: `kind "pid"`},
		{in: "uid:alice=app", err: "not a numeric id"},
		{in: "uid:1000=", err: "purpose pattern"},
		{in: "uid:1000=a,,b", err: "purpose pattern"},
		{in: "uid:1000=*/x", err: "purpose pattern"},
		{in: "user:no-such-user-p2pkey=a", err: "no-such-user-p2pkey"},
	} {
		r, err := ParseAppRule(tc.in)
		switch {
		case tc.err != "" && (err == nil || !testkit.ErrorSays(err, tc.err)):
			t.Errorf("%q: %v, want an error with %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.err == "" && r.String() != tc.want:
			t.Errorf("%q: %s, want %s", tc.in, r, tc.want)
		}
	}
}

func TestAppGrant(t *testing.T) {
	rule := func(s string) AppRule {
		r, err := ParseAppRule(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	rules := []AppRule{rule("uid:1000=app/*,exact"), rule("gid:50=shared/db"), rule("uid:7=*")}
	app := peerCred{UID: 1000, GID: 1000, known: true}
	member := peerCred{UID: 2000, GID: 2000, Groups: []uint32{50}, known: true}
	for _, tc := range []struct {
		cred    peerCred
		purpose string
		ok      bool
		why     string
	}{
		{app, "app/db", true, ""},
		{app, "app/", true, ""},
		{app, "app/a/b", true, ""},
		{app, "exact", true, ""},
		{app, "exact2", false, `may not have the key for purpose "exact2"`},
		{app, "apple", false, "it may have: app/*, exact"},
		{app, "luks/data", false, "may not have"},
		{member, "shared/db", true, ""},
		{member, "shared/db2", false, "may not have"},
		{peerCred{UID: 2000, GID: 50, known: true}, "shared/db", true, ""},
		{peerCred{UID: 2000, GID: 2000, known: true}, "shared/db", false, "uid 2000 has no rule"},
		{peerCred{UID: 7, known: true}, "anything/at/all", true, ""},
		{peerCred{UID: 1000}, "app/db", false, "has no rule"}, // credentials unknown
	} {
		err := appGrant(rules, tc.cred, tc.purpose)
		if (err == nil) != tc.ok || (err != nil && (!errors.Is(err, ErrForbidden) || !testkit.ErrorSays(err, tc.why))) {
			t.Errorf("%+v %q: %v, want ok=%v %q", tc.cred, tc.purpose, err, tc.ok, tc.why)
		}
	}
}

// TestServeApp: over the application socket, this process's uid (and its
// group) get the keys their rules grant, the node's own keys, and nothing
// else: another purpose, invite, remove, leave, status and the recovery kit
// are refused with 403 and ErrForbidden, and nothing changes.
func TestServeApp(t *testing.T) {
	nodes := testCluster(t, 2)
	waitUnlocked(t, nodes...)
	n := nodes[0]
	uid, gid := os.Getuid(), os.Getgid()
	rules := []AppRule{
		{ID: uint32(uid), Purposes: []string{"app/*"}},
		{Group: true, ID: uint32(gid), Purposes: []string{"grp"}},
	}
	path := filepath.Join(shortTempDir(t), "app.sock")
	if _, err := n.ServeApp(AppConfig{Path: path}); err == nil {
		t.Fatal("an application socket with no rules")
	}
	s, err := n.ServeApp(AppConfig{Path: path, Group: "0", Allow: rules})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != 0 {
		t.Fatalf("app socket %v gid %d, want a 0660 socket of group 0", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
	ctx := ctxT(t, 20*time.Second)
	c := NewSocketClient(path)
	for _, p := range []string{"app/db", "grp"} {
		want, err := n.Key(ctx, p, false)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Key(ctx, p, false)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s over the app socket: %x, %v; want %x", p, got, err, want)
		}
	}
	forbidden := func(what string, err error) {
		t.Helper()
		var ae *APIError
		if !errors.Is(err, ErrForbidden) || !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
			t.Fatalf("%s over the app socket: %v, want 403 forbidden", what, err)
		}
	}
	_, err = c.Key(ctx, "luks/data", false)
	forbidden("key luks/data", err)
	_, err = c.Invite(ctx, time.Hour)
	forbidden("invite", err)
	_, err = c.Remove(ctx, nodes[1].ID())
	forbidden("remove", err)
	_, err = c.Reinstate(ctx, nodes[1].ID())
	forbidden("reinstate", err)
	forbidden("leave", c.Leave(ctx))
	_, err = c.Status(ctx)
	forbidden("status", err)
	_, err = c.RecoveryKit(ctx, []string{"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"})
	forbidden("recovery kit", err)
	if got := n.memberStatus(nodes[1].ID()); got.String() != "active" {
		t.Fatalf("after the refusals node 1 is %s", got)
	}
	if _, err := os.Stat(n.cfg.recoveryPath()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused recovery kit was recorded: %v", err)
	}

	// A client of a socket nobody serves says which socket.
	_, err = NewSocketClient(filepath.Join(shortTempDir(t), "none.sock")).Key(ctx, "app/db", false)
	if !errors.Is(err, ErrDaemonNotRunning) || !testkit.ErrorSays(err, "none.sock") {
		t.Fatalf("absent socket: %v", err)
	}
}
