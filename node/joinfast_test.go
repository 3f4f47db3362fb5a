package node

import (
	"crypto/rand"
	"slices"
	"strings"

	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
)

func TestDeferJoiner(t *testing.T) {
	j, other := peer.ID("joiner"), peer.ID("other")
	t0 := time.Unix(1000, 0)
	open := generations.Generation{Number: 4, State: generations.StateOpen, Joiners: []peer.ID{j}, OpenedAt: t0, Deadline: t0.Add(time.Minute)}
	cases := []struct {
		name    string
		g       generations.Generation
		hasOpen bool
		p       peer.ID
		at      time.Time
		want    bool
	}{
		{"joiner of the open generation, just opened", open, true, j, t0.Add(10 * time.Millisecond), true},
		{"joiner after the delay", open, true, j, t0.Add(joinerRaftDelay), false},
		{"a joiner waiting for the next generation", open, true, other, t0, false},
		{"no open generation", generations.Generation{}, false, j, t0, false},
		{"short deadline: half of it bounds the wait", func() generations.Generation {
			g := open
			g.Deadline = t0.Add(200 * time.Millisecond)
			return g
		}(), true, j, t0.Add(100 * time.Millisecond), false},
	}
	for _, c := range cases {
		if got := deferJoiner(c.g, c.hasOpen, c.p, c.at); got != c.want {
			t.Errorf("%s: deferJoiner = %v, want %v", c.name, got, c.want)
		}
	}
}

func testPeerID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDecodeJoinGeneration(t *testing.T) {
	a, b := []byte(testPeerID(t)), []byte(testPeerID(t))
	ok := &pb.JoinResponse{Opened: &pb.OpenedGeneration{Version: openedVersion, Number: 3, Threshold: 2, Members: [][]byte{a, b}}}
	jg, err := decodeJoinGeneration(ok)
	if err != nil || jg == nil || jg.Number != 3 || jg.Threshold != 2 || len(jg.Members) != 2 {
		t.Fatalf("decodeJoinGeneration(%v) = %+v, %v", ok, jg, err)
	}
	if g := jg.generation(); g.State != generations.StateOpen || g.Number != 3 {
		t.Fatalf("generation() = %+v", g)
	}
	if jg, err := decodeJoinGeneration(&pb.JoinResponse{}); jg != nil || err != nil {
		t.Fatalf("no generation: %+v, %v", jg, err)
	}
	for _, bad := range []*pb.JoinResponse{
		{Opened: &pb.OpenedGeneration{Version: openedVersion, Number: 3, Threshold: 0, Members: [][]byte{a, b}}},
		{Opened: &pb.OpenedGeneration{Version: openedVersion, Number: 3, Threshold: 3, Members: [][]byte{a, b}}},
		{Opened: &pb.OpenedGeneration{Version: openedVersion, Number: 3, Threshold: 1, Members: [][]byte{a}}},
		{Opened: &pb.OpenedGeneration{Version: openedVersion, Number: 3, Threshold: 1, Members: [][]byte{a, {}}}},
		{Opened: &pb.OpenedGeneration{Version: openedVersion + 1, Number: 3, Threshold: 1, Members: [][]byte{a, b}}},
		{Opened: &pb.OpenedGeneration{Version: openedVersion, Number: 0, Threshold: 1, Members: [][]byte{a, b}}},
	} {
		if _, err := decodeJoinGeneration(bad); err == nil {
			t.Errorf("decodeJoinGeneration(%v) accepted it", bad)
		}
	}
}

func TestOpenedResult(t *testing.T) {
	c := testPeerID(t)
	g := generations.Generation{Number: 9, Members: []peer.ID{testPeerID(t), testPeerID(t), c}, Threshold: 2}
	r, ok := decodeOpened(encodeOpened(g))
	if !ok || r.Number != 9 || r.Threshold != 2 || len(r.Members) != 3 || r.Members[2] != c {
		t.Fatalf("round trip: %+v %v", r, ok)
	}
	wrongVersion := encodeOpened(g)
	wrongVersion[1]++ // field 1, the version
	for _, b := range [][]byte{nil, []byte("{}"), []byte("garbage"), wrongVersion} {
		if _, ok := decodeOpened(b); ok {
			t.Errorf("decodeOpened(%q) accepted it", b)
		}
	}
}

// The members that go at once (joiners, the leader, and the first others by
// hash) are exactly enough for the commit rule, and every node computes the
// same set.
func TestStandingBy(t *testing.T) {
	var members []peer.ID
	for range 7 {
		members = append(members, testPeerID(t))
	}
	slices.SortFunc(members, func(a, b peer.ID) int { return strings.Compare(string(a), string(b)) })
	joiner, leader := members[6], members[0]
	g := generations.Generation{Number: 12, State: generations.StateOpen, Members: members, Joiners: []peer.ID{joiner}, Threshold: 4}
	wait := standingBy(g, leader)
	if go_ := len(members) - len(wait); go_ != g.Threshold {
		t.Fatalf("%d members go at once, want t(g)=%d", go_, g.Threshold)
	}
	if slices.Contains(wait, leader) || slices.Contains(wait, joiner) {
		t.Fatalf("the leader or the joiner stands by: %v", wait)
	}
	if again := standingBy(g, leader); !slices.Equal(again, wait) {
		t.Fatal("standingBy is not deterministic")
	}
	g.Number = 13
	if other := standingBy(g, leader); slices.Equal(other, wait) && len(wait) > 1 {
		t.Log("the same members stand by in generation 13 (possible, if unlikely)")
	}
	// Many joiners: the leader and the joiners already reach t(g).
	g.Joiners = members[3:]
	if wait := standingBy(g, leader); len(wait) != 2 {
		t.Fatalf("with 4 joiners, %d stand by, want 2", len(wait))
	}
	// A leader outside the generation (it is being removed): one more goes.
	g.Joiners = []peer.ID{joiner}
	g.Members = members[1:]
	if wait := standingBy(g, leader); len(g.Members)-len(wait) != g.Threshold {
		t.Fatalf("leader outside g: %d go at once, want %d", len(g.Members)-len(wait), g.Threshold)
	}
}
