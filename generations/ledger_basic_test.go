package generations

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations/pb"
)

func TestBootstrapInviteDirectAdmission(t *testing.T) {
	h := newHarness(t)
	ks := keys(t, 3)
	a, b, c := ks[0].id, ks[1].id, ks[2].id

	if _, err := h.apply(NewAddInvite(inviteHash(1), invitePub(1), h.now.Add(time.Hour), a, h.tick())); !errors.Is(err, ErrNotBootstrapped) {
		t.Fatalf("before bootstrap: %v", err)
	}
	h.must(NewBootstrap(testCluster, a, h.tick()))
	if _, err := h.apply(NewBootstrap(testCluster, b, h.tick())); !errors.Is(err, ErrAlreadyBootstrapped) {
		t.Fatalf("second bootstrap: %v", err)
	}
	if !h.l.Bootstrapped() || h.l.ClusterID() != testCluster {
		t.Fatal("not bootstrapped")
	}
	if _, ok := h.l.Current(); ok {
		t.Fatal("bootstrap must not open or commit a generation")
	}

	h.must(NewAddInvite(inviteHash(1), invitePub(1), h.now.Add(time.Hour), a, h.tick()))
	if _, err := h.apply(NewAddInvite(inviteHash(1), invitePub(1), h.now.Add(time.Hour), a, h.tick())); !errors.Is(err, ErrDuplicateInvite) {
		t.Fatalf("duplicate invite: %v", err)
	}
	if _, err := h.apply(NewAddInvite(inviteHash(2), invitePub(2), h.now.Add(time.Hour), b, h.tick())); !errors.Is(err, ErrNotMember) {
		t.Fatalf("invite by stranger: %v", err)
	}
	inv, ok := h.l.Invite(inviteHash(1))
	if !ok || inv.Issuer != a || inv.UsedBy != "" {
		t.Fatalf("invite lookup: %+v %v", inv, ok)
	}
	res := h.must(NewConsumeInviteWithAddrs(inviteHash(1), b, testCluster, []string{"/ip4/127.0.0.1/tcp/4002"}, time.Time{}, h.tick()))
	if len(res.Admitted) != 1 || res.Admitted[0] != b || res.Opened != 0 {
		t.Fatalf("direct admission result: %+v", res)
	}
	if m, _ := h.l.Member(b); len(m.Addrs) != 1 || m.Addrs[0] != "/ip4/127.0.0.1/tcp/4002" {
		t.Fatalf("the joiner's addresses from its invite consumption: %+v", m)
	}
	if _, err := h.apply(NewConsumeInvite(inviteHash(1), c, testCluster, time.Time{}, h.tick())); !errors.Is(err, ErrInviteUsed) {
		t.Fatalf("reused invite: %v", err)
	}
	if inv, _ := h.l.Invite(inviteHash(1)); inv.UsedBy != b {
		t.Fatalf("invite not marked used: %+v", inv)
	}
	ms := h.l.Members()
	if len(ms) != 2 || ms[0].Status != StatusActive || ms[1].Status != StatusActive {
		t.Fatalf("members: %+v", ms)
	}

	h.must(NewSetAddrs(b, []string{"/ip4/127.0.0.1/tcp/4001"}, h.tick()))
	if m, _ := h.l.Member(b); len(m.Addrs) != 1 || m.Addrs[0] != "/ip4/127.0.0.1/tcp/4001" {
		t.Fatalf("addrs: %+v", m)
	}

	res = h.must(NewRemoveMember(b, h.now.Add(time.Hour), h.tick()))
	if res.Opened != 0 || res.Removed != b {
		t.Fatalf("a removal down to one member opens no generation (no escrow of threshold 1): %+v", res)
	}
	if g, ok := h.l.Open(); ok {
		t.Fatalf("open generation: %+v", g)
	}
	if m, _ := h.l.Member(b); m.Status != StatusRemoved {
		t.Fatalf("removed: %+v", m)
	}
	if _, err := h.apply(NewRemoveMember(a, h.now.Add(time.Hour), h.tick())); !errors.Is(err, ErrLastMember) {
		t.Fatalf("remove last: %v", err)
	}
	if _, err := h.apply(NewRemoveMember(c, h.now.Add(time.Hour), h.tick())); !errors.Is(err, ErrNotMember) {
		t.Fatalf("remove stranger: %v", err)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	ks := keys(t, 2)
	cmds := []*pb.Command{
		NewBootstrap(testCluster, ks[0].id, t0),
		NewAddInvite(inviteHash(1), invitePub(1), t0.Add(time.Hour), ks[0].id, t0),
		NewConsumeInvite(inviteHash(1), ks[1].id, testCluster, t0.Add(time.Minute), t0),
		NewOpenGeneration(t0.Add(time.Minute), t0),
		NewRecordReceipts([]Receipt{signed(t, testCluster, 1, ks[0].id, ks[1].id, digestOf(1, ks[0].id, ks[1].id))}, t0),
		NewAbortGeneration(1, t0),
		NewRetireGeneration(1, t0),
		NewRemoveMember(ks[1].id, t0.Add(time.Minute), t0),
		NewSetAddrs(ks[1].id, []string{"/ip4/1.2.3.4/udp/1/quic-v1"}, t0),
		NewRecordKeyCheck(ks[0].id, []byte("check"), t0),
		NewBootstrapWithRetention(testCluster, ks[0].id, 7, t0),
		NewSetRetention(5, ks[1].id, t0),
	}
	for i, c := range cmds {
		if ci := c.GetConsumeInvite(); ci != nil {
			ci.Proof = make([]byte, 64)
		}
		if err := Sign(c, ks[0].priv, testCluster, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatalf("%T: %v", c.GetBody(), err)
		}
		d, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("%T: decode: %v", c.GetBody(), err)
		}
		if !proto.Equal(c, d) {
			t.Fatalf("%T: round trip differs", c.GetBody())
		}
		b2, _ := EncodeCommand(d)
		if !bytes.Equal(b, b2) {
			t.Fatalf("%T: encoding not deterministic", c.GetBody())
		}
	}
}

func TestSnapshotRestoreBasic(t *testing.T) {
	h, ids := cluster(t, 3)
	h.must(NewSetAddrs(ids[1], []string{"/ip4/10.0.0.2/tcp/1"}, h.tick()))
	snap, err := h.l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	snap2, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snap, snap2) {
		t.Fatal("restored snapshot differs")
	}
	if cur, ok := r.Current(); !ok || cur.Number != 1 || len(cur.Members) != 3 {
		t.Fatalf("restored current: %+v", cur)
	}
	if err := r.Restore([]byte("garbage")); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("garbage restore: %v", err)
	}
	if snap3, _ := r.Snapshot(); !bytes.Equal(snap, snap3) {
		t.Fatal("failed restore changed the state")
	}
}

func TestErrorCodes(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range errorCodes {
		if seen[e.code] {
			t.Fatalf("duplicate code %q", e.code)
		}
		seen[e.code] = true
		if got := ErrorCode(fmt.Errorf("wrapped: %w", e.err)); got != e.code {
			t.Fatalf("ErrorCode(%v) = %q, want %q", e.err, got, e.code)
		}
		if ErrorByCode(e.code) != e.err {
			t.Fatalf("ErrorByCode(%q)", e.code)
		}
	}
	if ErrorCode(nil) != "" || ErrorCode(errors.New("x")) != "" || ErrorByCode("nope") != nil {
		t.Fatal("unknown errors must map to nothing")
	}
}
