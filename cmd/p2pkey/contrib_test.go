package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const contribDir = "../../contrib/systemd"

// TestSystemdUnit: the unit is a notify service with the hardening the
// product needs, and systemd itself (systemd-analyze verify) finds nothing
// wrong with it, run against the binary these tests built.
func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(contribDir, "p2pkey.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, line := range []string{
		"Type=notify", "NotifyAccess=main", "User=p2pkey", "StateDirectory=p2pkey", "RuntimeDirectory=p2pkey",
		"ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
		"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "TimeoutStartSec=infinity", "LimitCORE=0",
		"ExecStart=/usr/local/bin/p2pkey --data /var/lib/p2pkey daemon $P2PKEY_DAEMON_ARGS",
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("the unit lacks %q", line)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	path := filepath.Join(t.TempDir(), "p2pkey.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/p2pkey", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(analyze, "verify", path).CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "p2pkey.service") {
			t.Errorf("systemd-analyze verify: %s", l)
		}
	}
}

// TestSystemdUsers: the sysusers and tmpfiles snippets, applied to an empty
// root by systemd's own tools, make the p2pkey user, the p2pkey-apps group
// and a 0700 data directory the user owns.
func TestSystemdUsers(t *testing.T) {
	needRoot(t)
	sysusers, err1 := exec.LookPath("systemd-sysusers")
	tmpfiles, err2 := exec.LookPath("systemd-tmpfiles")
	if err1 != nil || err2 != nil {
		t.Skip("systemd-sysusers or systemd-tmpfiles is not installed")
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	abs, _ := filepath.Abs(contribDir)
	if out, err := exec.Command(sysusers, "--root="+root, filepath.Join(abs, "p2pkey.sysusers")).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(root, "etc/group"))
	var uid string
	for _, l := range strings.Split(string(passwd), "\n") {
		if f := strings.Split(l, ":"); len(f) > 5 && f[0] == "p2pkey" && f[5] == "/var/lib/p2pkey" {
			uid = f[2]
		}
	}
	if uid == "" || !strings.Contains(string(group), "\np2pkey-apps:") && !strings.HasPrefix(string(group), "p2pkey-apps:") {
		t.Fatalf("sysusers made:\n%s\n%s", passwd, group)
	}
	if out, err := exec.Command(tmpfiles, "--create", "--root="+root, filepath.Join(abs, "p2pkey.tmpfiles")).CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(root, "var/lib/p2pkey"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o700 || uid != strconv.FormatUint(uint64(st.Uid), 10) {
		t.Fatalf("data directory %v owned by %d, want 0700 and uid %s", fi.Mode(), st.Uid, uid)
	}
}
