package p2p

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// inNetnsEnv marks a test process re-executed inside a private network
// namespace by runInNetns.
const inNetnsEnv = "P2PKEY_TEST_NETNS"

// runInNetns re-runs the test named name inside a new network namespace
// that holds only a loopback interface with multicast turned on, so that
// multicast (mDNS, UPnP discovery) never leaves the test. It skips unless
// the test runs as root with iproute2 installed.
func runInNetns(t *testing.T, name string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip)")
	}
	ns := fmt.Sprintf("p2pk-test-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "set", "lo", "up")
	ip("-n", ns, "link", "set", "lo", "multicast", "on")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("inside namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("%s failed inside the namespace: %v", name, err)
	}
}

func TestMDNS(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		runInNetns(t, "TestMDNS")
		return
	}
	a := newTestHost(t)
	b := newTestHost(t)
	found := make(chan peer.AddrInfo, 16)
	onPeer := func(self peer.ID) func(peer.AddrInfo) {
		return func(ai peer.AddrInfo) {
			if ai.ID == self {
				t.Errorf("mdns reported the host itself")
			}
			found <- ai
		}
	}
	ca, err := StartMDNS(a, MDNSServiceTag, onPeer(a.ID()))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := StartMDNS(b, MDNSServiceTag, onPeer(b.ID()))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	// A host announcing another service is not reported.
	other := newTestHost(t)
	co, err := StartMDNS(other, "_other-v1._udp", func(peer.AddrInfo) {})
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()

	seen := map[peer.ID]peer.AddrInfo{}
	deadline := time.After(20 * time.Second)
	for len(seen) < 2 {
		select {
		case ai := <-found:
			if ai.ID == other.ID() {
				t.Fatal("mdns reported a host announcing another service")
			}
			seen[ai.ID] = ai
		case <-deadline:
			t.Fatalf("mdns found %d of 2 peers", len(seen))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, seen[b.ID()]); err != nil {
		t.Fatalf("dial the address mdns reported: %v", err)
	}
	if got := ConnType(a, b.ID()); got != ConnDirect {
		t.Fatalf("connection type %q, want direct", got)
	}
	if _, err := StartMDNS(a, "", onPeer(a.ID())); err == nil {
		t.Error("an empty service tag was accepted")
	}
}
