package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/node"
)

// helperBin is a copy of this test binary that other users can run: with
// P2PKEY_TEST_HELPER=luks-client it is a systemd-cryptsetup-like client
// (see helperMain).
var helperBin string

// helperMain runs this binary as a test helper when the environment asks
// for one, and exits; otherwise it returns false.
func helperMain() bool {
	if os.Getenv("P2PKEY_TEST_HELPER") != "luks-client" {
		return false
	}
	k, err := luksClient(os.Getenv("P2PKEY_TEST_SOCKET"), os.Getenv("P2PKEY_TEST_VOLUME"), 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Print(hex.EncodeToString(k))
	os.Exit(0)
	return true
}

func copyFile(from, to string, mode os.FileMode) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, mode)
}

// luksClient does what systemd-cryptsetup does with a key-file socket:
// bind to "\0<random>/cryptsetup/<volume>", connect, read to EOF. An empty
// volume connects unbound.
func luksClient(socket, volume string, timeout time.Duration) ([]byte, error) {
	var laddr *net.UnixAddr
	if volume != "" {
		var r [8]byte
		rand.Read(r[:])
		laddr = &net.UnixAddr{Name: fmt.Sprintf("@%x/cryptsetup/%s", binary.LittleEndian.Uint64(r[:]), volume), Net: "unix"}
	}
	c, err := net.DialUnix("unix", laddr, &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(timeout))
	return io.ReadAll(io.LimitReader(c, 4096))
}

// initNodeFixed is initNode on a fixed loopback port, so that its peers
// find it again after a restart (mDNS is off in these tests).
func initNodeFixed(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	d := dataDir(t)
	must(t, d, "init", "--listen", fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))
	return d
}

// shortDir is a fresh directory with a short path that every user may
// enter (sockets for other users live there).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// asUser runs name as uid:gid with supplementary groups; it needs root.
func asUser(t *testing.T, uid, gid uint32, groups []uint32, env []string, stdin io.Reader, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s as uid %d: %v", name, uid, err)
	}
	return r
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs clients as other users")
	}
}

// twoNodes starts a 2-node cluster (a cluster of one releases no key):
// node 1 bootstraps, node 2 joins with extra daemon args and env, and both
// are unlocked when it returns.
func twoNodes(t *testing.T, env []string, args ...string) (n1, n2 string, d1, d2 *daemon) {
	t.Helper()
	n1, n2 = initNode(t), initNode(t)
	d1 = startDaemon(t, n1, nil, "--bootstrap")
	d1.waitMember(t, 1)
	file := filepath.Join(filepath.Dir(n2), "invite.txt")
	if err := os.WriteFile(file, []byte(invite(t, n1)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2 = startDaemonEnv(t, n2, env, nil, append([]string{"--join-file", file}, args...)...)
	for _, n := range []string{n1, n2} {
		if r := cli(t, n, nil, "wait", "--members", "2", "--unlocked", "--timeout", "60s"); r.code != 0 {
			t.Fatalf("cluster not unlocked: %v", r)
		}
	}
	return n1, n2, d1, d2
}

// waitLog waits until the daemon's log contains s.
func (d *daemon) waitLog(t *testing.T, s string) {
	t.Helper()
	if err := testkit.Poll(10*time.Second, func() (bool, string) { return strings.Contains(d.log(), s), "" }); err != nil {
		t.Fatalf("daemon on %s did not log %q (%v):\n%s", d.data, s, err, tail(d.log(), 3000))
	}
}

// notifyListener is the service manager's end of $NOTIFY_SOCKET.
type notifyListener struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	path := filepath.Join(shortDir(t), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l := &notifyListener{path: path, msgs: make(chan string, 4096)}
	go func() {
		buf := make([]byte, 8192)
		for {
			n, _, err := c.ReadFromUnix(buf)
			if err != nil {
				return
			}
			l.msgs <- string(buf[:n])
		}
	}()
	return l
}

// until reads messages until one satisfies ok and returns it; every message
// read is passed to each (which may fail the test). It fails the test if
// the daemon exits or timeout passes first.
func (l *notifyListener) until(t *testing.T, d *daemon, what string, timeout time.Duration, each func(string), ok func(string) bool) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-l.msgs:
			if each != nil {
				each(m)
			}
			if ok(m) {
				return m
			}
		case <-d.done:
			// It may have said it before it exited.
			for {
				select {
				case m := <-l.msgs:
					if each != nil {
						each(m)
					}
					if ok(m) {
						return m
					}
					continue
				default:
				}
				break
			}
			t.Fatalf("waiting for %s: the daemon exited:\n%s", what, tail(d.log(), 3000))
		case <-deadline:
			t.Fatalf("no %s after %v", what, timeout)
		}
	}
}

func hasLine(msg, line string) bool {
	for _, l := range strings.Split(msg, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

func shortPeer(id string) string { return id[:8] + "…" + id[len(id)-6:] }

// TestSystemdNotify runs the daemon as systemd's Type=notify would, with a
// notify socket listener in place of systemd:
//   - while it joins, and while a restarted node is locked, it sends STATUS
//     lines (k of t, and whom it waits on) and no READY;
//   - READY=1 comes once it is unlocked: a key asked for right then, without
//     --wait, as a unit ordered After=p2pkey.service would, succeeds;
//   - WATCHDOG=1 pings with WATCHDOG_USEC, STOPPING=1 on SIGTERM;
//   - the LUKS socket, while locked, waits --luks-wait and closes with no
//     key; once unlocked it serves the key.
func TestSystemdNotify(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	l := listenNotify(t)
	luks := filepath.Join(shortDir(t), "luks.sock")
	env := []string{"NOTIFY_SOCKET=" + l.path}
	sockArgs := []string{"--luks-socket", luks, "--luks-wait", "1s"}

	n1 := initNodeFixed(t)
	d1 := startDaemon(t, n1, nil, "--bootstrap")
	d1.waitMember(t, 1)
	id1 := status(t, n1).PeerID
	n2 := initNodeFixed(t)
	file := filepath.Join(filepath.Dir(n2), "invite.txt")
	if err := os.WriteFile(file, []byte(invite(t, n1)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := startDaemonEnv(t, n2, env, nil, append([]string{"--join-file", file}, sockArgs...)...)

	// Joining: a STATUS line first, READY only once unlocked.
	first := l.until(t, d2, "a first message", 30*time.Second, nil, func(string) bool { return true })
	if first != "STATUS=joining the cluster" {
		t.Fatalf("first notify message %q, want the joining status", first)
	}
	l.until(t, d2, "READY=1 after the join", 60*time.Second, nil, func(m string) bool { return hasLine(m, "READY=1") })
	r := cli(t, n2, nil, "key", "--purpose", "svc")
	if r.code != 0 {
		t.Fatalf("READY=1 was sent, but a key asked for at once failed: %v", r)
	}
	want := r.stdout

	// STOPPING=1 on SIGTERM.
	d2.stop(t)
	l.until(t, d2, "STOPPING=1", 5*time.Second, nil, func(m string) bool { return hasLine(m, "STOPPING=1") })
	d1.stop(t)

	// Restarted alone: locked with 1 of 2 shares, waiting on node 1; no
	// READY; the watchdog is fed.
	d2 = startDaemonEnv(t, n2, append(env, "WATCHDOG_USEC=300000"), nil, sockArgs...)
	noReady := func(m string) {
		if hasLine(m, "READY=1") {
			t.Fatalf("READY=1 while node 1 is down (the node cannot be unlocked): %q", m)
		}
	}
	locked := l.until(t, d2, "a locked STATUS with k of t", 30*time.Second, noReady, func(m string) bool {
		return strings.Contains(m, "STATUS=locked: 1 of 2 shares") && strings.Contains(m, "waiting on "+shortPeer(id1))
	})
	t.Logf("locked: %s", locked)
	dogs := 0
	l.until(t, d2, "two watchdog pings", 5*time.Second, noReady, func(m string) bool {
		if hasLine(m, "WATCHDOG=1") {
			dogs++
		}
		return dogs >= 2
	})
	if r := cli(t, n2, nil, "key", "--purpose", "svc"); r.code != exitLocked {
		t.Fatalf("key while locked: %v", r)
	}
	start := time.Now()
	k, err := luksClient(luks, "data", 10*time.Second)
	if err != nil || len(k) != 0 {
		t.Fatalf("LUKS socket while locked: %d bytes, %v; want none and a clean close", len(k), err)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Fatalf("LUKS socket closed after %v while locked; it should wait --luks-wait (1s) first", waited)
	}

	// Node 1 back: READY, and the key on the first try.
	startDaemon(t, n1, nil) // stopped by the test's cleanup
	l.until(t, d2, "READY=1 after the restart", 60*time.Second, nil, func(m string) bool { return hasLine(m, "READY=1") })
	r = cli(t, n2, nil, "key", "--purpose", "svc")
	if r.code != 0 || r.stdout != want {
		t.Fatalf("key at READY after the restart: %v (want %q)", r, want)
	}
	k, err = luksClient(luks, "data", 10*time.Second)
	if raw := must(t, n2, "key", "--purpose", "luks/data", "--format", "raw"); err != nil || string(k) != raw {
		t.Fatalf("LUKS socket once unlocked: %x, %v; want %x", k, err, raw)
	}
	d2.stop(t)
	l.until(t, d2, "STOPPING=1", 5*time.Second, nil, func(m string) bool { return hasLine(m, "STOPPING=1") })
	if _, err := os.Stat(luks); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the LUKS socket outlived the daemon: %v", err)
	}
}

// TestKeySockets: the LUKS socket and the application key socket, with
// clients of other users.
//   - a client bound to "\0xyz/cryptsetup/data" gets exactly what
//     `key --purpose luks/data --format raw` prints; an allowed uid too; a
//     uid that is not allowed, and a client not bound to cryptsetup's
//     address, get nothing;
//   - real cryptsetup opens a LUKS2 volume formatted with that key, from
//     the socket's bytes (plain cryptsetup cannot read a socket itself);
//   - real systemd-cryptsetup, where installed, gets the key for the
//     volume it names;
//   - an application user gets the keys its rule grants, by uid or by a
//     supplementary group, encrypts and decrypts, and is refused other
//     purposes and invite, remove, leave (HTTP 403, exit 1).
func TestKeySockets(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	needRoot(t)
	const (
		appUID, groupUID, strangerUID = 4242, 4244, 4245
		sockGID, sharedGID            = 4300, 4301
	)
	dir := shortDir(t)
	luks, app := filepath.Join(dir, "luks.sock"), filepath.Join(dir, "app.sock")
	_, n2, _, d2 := twoNodes(t, nil,
		"--luks-socket", luks, "--luks-allow-uid", fmt.Sprint(appUID),
		"--app-socket", app, "--app-group", fmt.Sprint(sockGID),
		"--app-allow", fmt.Sprintf("uid:%d=app/*", appUID),
		"--app-allow", fmt.Sprintf("gid:%d=shared/db", sharedGID))

	// LUKS socket.
	raw := must(t, n2, "key", "--purpose", "luks/data", "--format", "raw")
	if len(raw) != node.KeySize {
		t.Fatalf("key --format raw printed %d bytes", len(raw))
	}
	k, err := luksClient(luks, "data", 10*time.Second)
	if err != nil || !bytes.Equal(k, []byte(raw)) {
		t.Fatalf("root client for volume data: %x, %v; want %x", k, err, raw)
	}
	if k, _ := luksClient(luks, "other", 10*time.Second); len(k) != node.KeySize || bytes.Equal(k, []byte(raw)) {
		t.Fatalf("volume other got %x, want its own key", k)
	}
	if k, err := luksClient(luks, "", 10*time.Second); err != nil || len(k) != 0 {
		t.Fatalf("a client not bound to cryptsetup's address got %d bytes (%v)", len(k), err)
	}
	helper := func(uid uint32) result {
		return asUser(t, uid, uid, nil, []string{"P2PKEY_TEST_HELPER=luks-client", "P2PKEY_TEST_SOCKET=" + luks, "P2PKEY_TEST_VOLUME=data"}, nil, helperBin)
	}
	if r := helper(appUID); r.code != 0 || r.stdout != hex.EncodeToString([]byte(raw)) {
		t.Fatalf("allowed uid %d: %v", appUID, r)
	}
	if r := helper(strangerUID); r.code != 0 || r.stdout != "" {
		t.Fatalf("uid %d, not allowed, got a key: %v", strangerUID, r)
	}
	d2.waitLog(t, fmt.Sprintf(`neither root nor an allowed uid	{"uid": %d`, strangerUID))

	t.Run("cryptsetup", func(t *testing.T) {
		if _, err := exec.LookPath("cryptsetup"); err != nil {
			t.Skip("cryptsetup is not installed")
		}
		img := filepath.Join(t.TempDir(), "luks.img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 20<<20); err != nil {
			t.Fatal(err)
		}
		cs := func(stdin []byte, args ...string) (string, error) {
			cmd := exec.Command("cryptsetup", args...)
			cmd.Stdin = bytes.NewReader(stdin)
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		// Enrol: format with the key `key --format raw` prints.
		if out, err := cs([]byte(raw), "luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--batch-mode", "--key-file", "-", img); err != nil {
			t.Fatalf("luksFormat: %v\n%s", err, out)
		}
		// Plain cryptsetup opens a key file with open(2), which a socket
		// refuses: the socket is for systemd-cryptsetup.
		if out, err := cs(nil, "open", "--test-passphrase", "--key-file", luks, img); err == nil {
			t.Logf("cryptsetup read the socket itself:\n%s", out)
		}
		fromSocket, err := luksClient(luks, "data", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := cs(fromSocket, "open", "--test-passphrase", "--key-file", "-", img); err != nil {
			t.Fatalf("cryptsetup open with the socket's key for volume data: %v\n%s", err, out)
		}
		wrong, _ := luksClient(luks, "other", 10*time.Second)
		if _, err := cs(wrong, "open", "--test-passphrase", "--key-file", "-", img); err == nil {
			t.Fatal("cryptsetup opened the volume with another volume's key: the check cannot fail")
		}

		// systemd-cryptsetup itself: it cannot activate without
		// device-mapper here, but it reads the key from the socket first.
		sdc := "/lib/systemd/systemd-cryptsetup"
		if _, err := os.Stat(sdc); err != nil {
			t.Logf("no %s: skipping the systemd-cryptsetup check", sdc)
			return
		}
		out, _ := exec.Command(sdc, "attach", "sdvol", img, luks, "luks,headless").CombinedOutput()
		t.Logf("systemd-cryptsetup attach:\n%s", out)
		d2.waitLog(t, `LUKS key served	{"volume": "sdvol", "uid": 0`)
	})

	t.Run("app", func(t *testing.T) {
		appKey := func(uid, gid uint32, groups []uint32, args ...string) result {
			return asUser(t, uid, gid, groups, nil, nil, bin, append([]string{"--socket", app}, args...)...)
		}
		want := must(t, n2, "key", "--purpose", "app/db")
		if r := appKey(appUID, sockGID, nil, "key", "--purpose", "app/db"); r.code != 0 || r.stdout != want {
			t.Fatalf("uid %d, purpose app/db: %v (want %q)", appUID, r, want)
		}
		// $P2PKEY_SOCKET names the socket too.
		r := asUser(t, appUID, sockGID, nil, []string{"P2PKEY_SOCKET=" + app}, nil, bin, "key", "--purpose", "app/db")
		if r.code != 0 || r.stdout != want {
			t.Fatalf("with P2PKEY_SOCKET: %v", r)
		}
		if r := appKey(appUID, sockGID, nil, "key", "--purpose", "luks/data"); r.code != 1 || !strings.Contains(r.stderr, `may not have the key for purpose "luks/data"`) {
			t.Fatalf("uid %d, purpose luks/data: %v", appUID, r)
		}
		// A supplementary group's rule.
		wantDB := must(t, n2, "key", "--purpose", "shared/db")
		if r := appKey(groupUID, sockGID, []uint32{sharedGID}, "key", "--purpose", "shared/db"); r.code != 0 || r.stdout != wantDB {
			t.Fatalf("uid %d in group %d: %v", groupUID, sharedGID, r)
		}
		if r := appKey(groupUID, sockGID, nil, "key", "--purpose", "shared/db"); r.code != 1 || !strings.Contains(r.stderr, "has no rule") {
			t.Fatalf("uid %d outside group %d: %v", groupUID, sharedGID, r)
		}
		if r := appKey(strangerUID, sockGID, nil, "key", "--purpose", "app/db"); r.code != 1 || !strings.Contains(r.stderr, "has no rule") {
			t.Fatalf("uid %d with no rule: %v", strangerUID, r)
		}
		// Not in the socket's group: the file mode keeps it out.
		if r := appKey(appUID, appUID, nil, "key", "--purpose", "app/db"); r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
			t.Fatalf("uid %d outside the socket's group: %v", appUID, r)
		}
		// encrypt and decrypt, and the owner opens what the app sealed.
		sealed := asUser(t, appUID, sockGID, nil, nil, strings.NewReader("app secret"), bin, "--socket", app, "encrypt", "--purpose", "app/files")
		if sealed.code != 0 {
			t.Fatalf("app encrypt: %v", sealed)
		}
		opened := asUser(t, appUID, sockGID, nil, nil, strings.NewReader(sealed.stdout), bin, "--socket", app, "decrypt", "--purpose", "app/files")
		if opened.code != 0 || opened.stdout != "app secret" {
			t.Fatalf("app decrypt: %v", opened)
		}
		if r := cli(t, n2, strings.NewReader(sealed.stdout), "decrypt", "--purpose", "app/files"); r.code != 0 || r.stdout != "app secret" {
			t.Fatalf("owner decrypt of the app's file: %v", r)
		}
		// Never invite, remove, leave.
		id2 := status(t, n2).PeerID
		for _, args := range [][]string{{"invite"}, {"remove", "--yes", id2}, {"leave", "--yes"}, {"recovery-kit", "--recipient", testRecipient(t)}} {
			r := appKey(appUID, sockGID, nil, args...)
			if r.code != 1 || !strings.Contains(r.stderr, "forbidden: the application key socket serves keys only") {
				t.Fatalf("app user ran %v: %v", args, r)
			}
		}
		// The API answers 403 (asked here as root, which has no rule).
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", app)
		}}}
		for _, path := range []string{"invite", "remove", "leave", "reinstate", "recovery-kit", "key"} {
			resp, err := hc.Post("http://p2pkey/v1/"+path, "application/json", strings.NewReader(`{"purpose":"app/db","peer_id":"`+id2+`"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("POST /v1/%s on the app socket: %s, want 403", path, resp.Status)
			}
		}
		if st := status(t, n2); st.memberStatus(id2) != "active" {
			t.Fatalf("after the app socket's refusals node 2 is %q", st.memberStatus(id2))
		}
	})
}

// testRecipient is a fresh age recipient.
func testRecipient(t *testing.T) string {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id.Recipient().String()
}

// TestRecoveryKit: a kit made from a live 2-node cluster, the whole cluster
// deleted, and the kit with its age identity derives byte-identical keys
// and decrypts a file `encrypt` made, with no daemon and no network.
func TestRecoveryKit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	n1, n2, d1, d2 := twoNodes(t, nil)
	dir := t.TempDir()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "ops.key")
	if err := os.WriteFile(idFile, []byte("# ops\n"+id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := age.GenerateX25519Identity()
	otherFile := filepath.Join(dir, "other.key")
	os.WriteFile(otherFile, []byte(other.String()+"\n"), 0o600)

	if line := statusLine(must(t, n2, "status"), "recovery:"); line != "no recovery kit made" {
		t.Fatalf("status before any kit: %q", line)
	}
	if r := cli(t, n2, nil, "recovery-kit", "--recipient", "not-a-recipient"); r.code != exitUsage {
		t.Fatalf("bad recipient: %v", r)
	}
	kit := filepath.Join(dir, "node2.kit")
	r := cli(t, n2, nil, "recovery-kit", "--recipient", id.Recipient().String(), "--out", kit)
	if r.code != 0 || !strings.Contains(r.stderr, "whoever holds this kit") || r.stdout != "" {
		t.Fatalf("recovery-kit: %v", r)
	}
	if r := cli(t, n2, nil, "recovery-kit", "--recipient", id.Recipient().String(), "--out", kit); r.code == 0 {
		t.Fatalf("recovery-kit overwrote --out: %v", r)
	}
	fi, err := os.Stat(kit)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kit file: %v %v", fi, err)
	}
	kitData, _ := os.ReadFile(kit)
	if !bytes.HasPrefix(kitData, []byte("-----BEGIN AGE ENCRYPTED FILE-----")) {
		t.Fatalf("the kit is not an armoured age file:\n%s", kitData)
	}
	var st struct {
		RecoveryKit *node.RecoveryKitStatus `json:"recovery_kit"`
	}
	if err := json.Unmarshal([]byte(must(t, n2, "status", "--json")), &st); err != nil || st.RecoveryKit == nil || !st.RecoveryKit.CurrentKey {
		t.Fatalf("status --json after the kit: %+v %v", st.RecoveryKit, err)
	}
	if line := statusLine(must(t, n2, "status"), "recovery:"); !strings.Contains(line, "for the current key") {
		t.Fatalf("status after the kit: %q", line)
	}
	if r := cli(t, n2, nil, "leave"); r.code != exitUsage || !strings.Contains(r.stderr, "except through the recovery kit made") {
		t.Fatalf("leave's warning does not mention the kit: %v", r)
	}
	if r := cli(t, n1, nil, "leave"); r.code != exitUsage || !strings.Contains(r.stderr, "no recovery kit was made for it") {
		t.Fatalf("leave's warning on a node without a kit: %v", r)
	}

	purposes := []string{"default", "luks/data", "app/db"}
	keys := map[string]string{}
	for _, p := range purposes {
		keys[p] = must(t, n2, "key", "--purpose", p)
	}
	rawKey := must(t, n2, "key", "--purpose", "luks/data", "--format", "raw")
	plain := "the cluster is gone, the data is not\n"
	sealed := cli(t, n2, strings.NewReader(plain), "encrypt")
	if sealed.code != 0 {
		t.Fatalf("encrypt: %v", sealed)
	}
	// The kit is ciphertext: neither K's derived keys nor anything else
	// readable.
	for p, k := range keys {
		if bytes.Contains(kitData, []byte(strings.TrimSpace(k))) {
			t.Fatalf("the kit file holds the %s key in clear", p)
		}
	}

	// The whole cluster is gone.
	d1.stop(t)
	d2.stop(t)
	for _, d := range []string{n1, n2} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}

	recover := func(stdin io.Reader, args ...string) result {
		return cli(t, filepath.Join(dir, "nowhere"), stdin, append([]string{"recover", "--kit", kit, "--identity", idFile}, args...)...)
	}
	for _, p := range purposes {
		if r := recover(nil, "key", "--purpose", p); r.code != 0 || r.stdout != keys[p] {
			t.Fatalf("recover key --purpose %s: %v, want %q", p, r, keys[p])
		}
	}
	if r := recover(nil, "key", "--purpose", "luks/data", "--format", "raw"); r.code != 0 || r.stdout != rawKey {
		t.Fatalf("recover key --format raw: %v", r)
	}
	if r := recover(strings.NewReader(sealed.stdout), "decrypt"); r.code != 0 || r.stdout != plain {
		t.Fatalf("recover decrypt: %v", r)
	}
	if r := recover(nil, "show"); r.code != 0 || !strings.Contains(r.stdout, "passes its key check") {
		t.Fatalf("recover show: %v", r)
	}
	// Another identity does not open it.
	r = cli(t, dir, nil, "recover", "--kit", kit, "--identity", otherFile, "key")
	if r.code != 1 || !strings.Contains(r.stderr, "not a valid p2pkey recovery kit") {
		t.Fatalf("recover with another identity: %v", r)
	}
}

// statusLine returns the rest of the status line starting with prefix.
func statusLine(status, prefix string) string {
	for _, l := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}
