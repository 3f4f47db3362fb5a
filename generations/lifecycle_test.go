package generations

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations/pb"
)

func TestTransitionTable(t *testing.T) {
	states := []GenerationState{StateOpen, StateCommitted, StateAborted, StateRetired, StateUnknown}
	events := []Event{EventCommit, EventAbort, EventRetire, Event(99)}
	want := map[GenerationState]map[Event]struct {
		next GenerationState
		err  error
	}{
		StateOpen: {
			EventCommit: {StateCommitted, nil},
			EventAbort:  {StateAborted, nil},
			EventRetire: {StateOpen, ErrGenerationNotCommitted},
			Event(99):   {StateOpen, ErrInvalidState},
		},
		StateCommitted: {
			EventCommit: {StateCommitted, ErrGenerationCommitted},
			EventAbort:  {StateCommitted, ErrGenerationCommitted},
			EventRetire: {StateRetired, nil},
			Event(99):   {StateCommitted, ErrInvalidState},
		},
		StateAborted: {
			EventCommit: {StateAborted, ErrGenerationAborted},
			EventAbort:  {StateAborted, ErrGenerationAborted},
			EventRetire: {StateAborted, ErrGenerationAborted},
			Event(99):   {StateAborted, ErrInvalidState},
		},
		StateRetired: {
			EventCommit: {StateRetired, ErrGenerationRetired},
			EventAbort:  {StateRetired, ErrGenerationRetired},
			EventRetire: {StateRetired, ErrGenerationRetired},
			Event(99):   {StateRetired, ErrInvalidState},
		},
		StateUnknown: {
			EventCommit: {StateUnknown, ErrInvalidState},
			EventAbort:  {StateUnknown, ErrInvalidState},
			EventRetire: {StateUnknown, ErrInvalidState},
			Event(99):   {StateUnknown, ErrInvalidState},
		},
	}
	for _, s := range states {
		for _, e := range events {
			w := want[s][e]
			t.Run(s.String()+"/"+e.String(), func(t *testing.T) {
				next, err := s.Next(e)
				if next != w.next {
					t.Errorf("next = %s, want %s", next, w.next)
				}
				if w.err == nil && err != nil || w.err != nil && !errors.Is(err, w.err) {
					t.Errorf("err = %v, want %v", err, w.err)
				}
			})
		}
	}
}

func TestMemberTransitionTable(t *testing.T) {
	statuses := []MemberStatus{StatusUnknown, StatusJoining, StatusActive, StatusRejected, StatusLapsed, StatusRemoved, MemberStatus(99)}
	events := []MemberEvent{MemberJoin, MemberAdmit, MemberCommit, MemberAbort, MemberLapse, MemberRemove, MemberEvent(99)}
	type outcome struct {
		next MemberStatus
		err  error
	}
	// ok and bad build the rows: one outcome per event, in events' order.
	ok := func(s MemberStatus) outcome { return outcome{s, nil} }
	bad := func(s MemberStatus, err error) outcome { return outcome{s, err} }
	want := map[MemberStatus][]outcome{
		StatusUnknown: {
			ok(StatusJoining), ok(StatusActive),
			bad(StatusUnknown, ErrNotMember), bad(StatusUnknown, ErrNotMember),
			bad(StatusUnknown, ErrNotMember), bad(StatusUnknown, ErrNotMember),
			bad(StatusUnknown, ErrInvalidMemberStatus),
		},
		StatusJoining: {
			bad(StatusJoining, ErrAlreadyMember), bad(StatusJoining, ErrAlreadyMember),
			ok(StatusActive), ok(StatusRejected),
			bad(StatusJoining, ErrNotActive), ok(StatusRemoved),
			bad(StatusJoining, ErrInvalidMemberStatus),
		},
		StatusActive: {
			bad(StatusActive, ErrAlreadyMember), bad(StatusActive, ErrAlreadyMember),
			bad(StatusActive, ErrAlreadyMember), bad(StatusActive, ErrInvalidMemberStatus),
			ok(StatusLapsed), ok(StatusRemoved),
			bad(StatusActive, ErrInvalidMemberStatus),
		},
		StatusRejected: {
			ok(StatusJoining), bad(StatusRejected, ErrDirectAdmission),
			bad(StatusRejected, ErrNotMember), bad(StatusRejected, ErrNotMember),
			bad(StatusRejected, ErrNotMember), bad(StatusRejected, ErrNotMember),
			bad(StatusRejected, ErrInvalidMemberStatus),
		},
		StatusLapsed: {
			ok(StatusJoining), bad(StatusLapsed, ErrDirectAdmission),
			bad(StatusLapsed, ErrMemberLapsed), bad(StatusLapsed, ErrMemberLapsed),
			bad(StatusLapsed, ErrMemberLapsed), ok(StatusRemoved),
			bad(StatusLapsed, ErrInvalidMemberStatus),
		},
		StatusRemoved: {
			bad(StatusRemoved, ErrMemberRemoved), bad(StatusRemoved, ErrMemberRemoved),
			bad(StatusRemoved, ErrMemberRemoved), bad(StatusRemoved, ErrMemberRemoved),
			bad(StatusRemoved, ErrMemberRemoved), bad(StatusRemoved, ErrMemberRemoved),
			bad(StatusRemoved, ErrInvalidMemberStatus),
		},
		MemberStatus(99): {
			bad(99, ErrInvalidMemberStatus), bad(99, ErrInvalidMemberStatus),
			bad(99, ErrInvalidMemberStatus), bad(99, ErrInvalidMemberStatus),
			bad(99, ErrInvalidMemberStatus), bad(99, ErrInvalidMemberStatus),
			bad(99, ErrInvalidMemberStatus),
		},
	}
	for _, s := range statuses {
		if len(want[s]) != len(events) {
			t.Fatalf("row %s has %d outcomes, want %d", s, len(want[s]), len(events))
		}
		for i, e := range events {
			w := want[s][i]
			t.Run(s.String()+"/"+e.String(), func(t *testing.T) {
				next, err := s.Next(e)
				if next != w.next {
					t.Errorf("next = %s, want %s", next, w.next)
				}
				if w.err == nil && err != nil || w.err != nil && !errors.Is(err, w.err) {
					t.Errorf("err = %v, want %v", err, w.err)
				}
				if err != nil && ErrorByCode(ErrorCode(err)) != w.err {
					t.Errorf("code %q does not map back to %v", ErrorCode(err), w.err)
				}
			})
		}
	}
}

// TestSetStatusPanicsOnInvalidTransition: an invalid member transition in
// the apply path is a bug; setStatus panics without changing the status,
// and Apply turns the panic into ErrInternal, which the property and fuzz
// tests fail on.
func TestSetStatusPanicsOnInvalidTransition(t *testing.T) {
	h, ids := cluster(t, 3)
	l := h.l
	defer func() {
		r := recover()
		err, ok := r.(error)
		if !ok || !errors.Is(err, ErrAlreadyMember) {
			t.Fatalf("recovered %v, want an error wrapping ErrAlreadyMember", r)
		}
		if m, _ := l.Member(ids[0]); m.Status != StatusActive {
			t.Fatalf("status changed to %s", m.Status)
		}
	}()
	l.setStatus(ids[0], MemberJoin)
	t.Fatal("setStatus did not panic on active --join-->")
}

// joinWithDeadline invites and starts joiner through a generation.
func joinWithDeadline(h *harness, issuer, joiner peer.ID, inv int, deadline time.Duration) Result {
	h.tb.Helper()
	h.must(NewAddInvite(inviteHash(inv), invitePub(inv), h.now.Add(time.Hour), issuer, h.tick()))
	return h.must(NewConsumeInvite(inviteHash(inv), joiner, testCluster, h.now.Add(deadline), h.tick()))
}

func TestJoinCommitRetires(t *testing.T) {
	h, ids := cluster(t, 3)
	d := keys(t, 4)[3].id
	res := joinWithDeadline(h, ids[0], d, 100, time.Minute)
	if res.Opened != 2 {
		t.Fatalf("join must open generation 2: %+v", res)
	}
	g, ok := h.l.Open()
	if !ok || g.Number != 2 || len(g.Members) != 4 || g.Threshold != 3 || len(g.Joiners) != 1 || g.Joiners[0] != d {
		t.Fatalf("open generation: %+v", g)
	}
	if m, _ := h.l.Member(d); m.Status != StatusJoining {
		t.Fatalf("joiner status %s", m.Status)
	}
	// A second joiner waits for the next generation (batching).
	e := keys(t, 5)[4].id
	if res := joinWithDeadline(h, ids[0], e, 101, time.Minute); res.Opened != 0 {
		t.Fatalf("second joiner must not open a generation: %+v", res)
	}
	if p := h.l.PendingJoiners(); len(p) != 1 || p[0] != e {
		t.Fatalf("pending joiners: %v", p)
	}
	if _, err := h.apply(NewOpenGeneration(h.now.Add(time.Hour), h.tick())); !errors.Is(err, ErrGenerationOpen) {
		t.Fatalf("second open: %v", err)
	}

	// Record one receipt at a time: the generation must commit exactly at
	// the first receipt after which every commit rule holds.
	for _, r := range h.fullReceipts(2, g.Members) {
		res = h.must(NewRecordReceipts([]Receipt{r}, h.tick()))
		sf, _ := h.l.JoinShortfall(d)
		if res.Committed == 2 {
			break
		}
		if sf.Met() && sf.MembersEscrowed >= sf.Needed {
			t.Fatalf("rules met but not committed: %+v", sf)
		}
	}
	if len(res.Admitted) != 1 || res.Admitted[0] != d || len(res.Retired) != 0 {
		// Generation 1 stays until every active member of 2 is escrowed in 2.
		t.Fatalf("commit result: %+v", res)
	}
	// The rest of the receipts land after the commit (late escrow into the
	// current generation); once every member is escrowed in 2, 1 retires.
	res = h.must(NewRecordReceipts(h.fullReceipts(2, g.Members), h.tick()))
	if len(res.Retired) != 1 || res.Retired[0] != 1 || res.Recorded == 0 {
		t.Fatalf("late receipts: %+v", res)
	}
	cur, _ := h.l.Current()
	if cur.Number != 2 || cur.State != StateCommitted {
		t.Fatalf("current: %+v (res %+v)", cur, res)
	}
	if m, _ := h.l.Member(d); m.Status != StatusActive {
		t.Fatalf("joiner not admitted: %s", m.Status)
	}
	g1, _ := h.l.Generation(1)
	if g1.State != StateRetired || g1.Receipts != 0 {
		t.Fatalf("generation 1 must be retired: %+v", g1)
	}
	// The waiting joiner goes into the next generation.
	res = h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
	g3, _ := h.l.Open()
	if res.Opened != 3 || len(g3.Joiners) != 1 || g3.Joiners[0] != e || len(g3.Members) != 5 {
		t.Fatalf("generation 3: %+v", g3)
	}
}

func TestAbortReportsShortfall(t *testing.T) {
	h, ids := cluster(t, 3)
	d := keys(t, 4)[3].id
	joinWithDeadline(h, ids[0], d, 100, time.Minute)
	g, _ := h.l.Open()
	// d escrowed with 2 of 3 holders; d holds shares of 1 of 3 owners.
	rs := []Receipt{
		signed(t, testCluster, 2, d, d, digestOf(2, d, d)),
		signed(t, testCluster, 2, d, ids[0], digestOf(2, d, ids[0])),
	}
	h.must(NewRecordReceipts(rs, h.tick()))
	sf, ok := h.l.JoinShortfall(d)
	if !ok || sf.HoldersAcked != 2 || sf.OwnersHeld != 1 || sf.Needed != 3 {
		t.Fatalf("shortfall: %+v", sf)
	}
	if _, err := h.apply(NewAbortGeneration(2, h.tick())); !errors.Is(err, ErrDeadlineNotReached) {
		t.Fatalf("early abort: %v", err)
	}
	h.now = g.Deadline
	res := h.must(NewAbortGeneration(2, h.now))
	if res.Aborted != 2 || len(res.Rejected) != 1 {
		t.Fatalf("abort result: %+v", res)
	}
	msg := res.Rejected[0].String()
	for _, want := range []string{"2 of 3 holders acknowledged", "holds shares of 1 of 3 required owners"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("shortfall %q lacks %q", msg, want)
		}
	}
	m, _ := h.l.Member(d)
	if m.Status != StatusRejected || m.Reason != msg {
		t.Fatalf("rejected member: %+v", m)
	}
	g2, _ := h.l.Generation(2)
	if g2.State != StateAborted || g2.Receipts != 0 {
		t.Fatalf("aborted generation keeps receipts: %+v", g2)
	}
	if cur, _ := h.l.Current(); cur.Number != 1 {
		t.Fatalf("current after abort: %d", cur.Number)
	}
	if h.l.EnvelopeLive(2, d, ids[0]) || h.l.ServeAllowed(2, d, ids[0]) == nil {
		t.Fatal("aborted envelopes must be dead")
	}
	// A rejected peer may try again with a new invite.
	if res := joinWithDeadline(h, ids[0], d, 101, time.Minute); res.Opened != 3 {
		t.Fatalf("rejoin: %+v", res)
	}
}

func TestRemoveAbortsOpenGeneration(t *testing.T) {
	h, ids := cluster(t, 3)
	d := keys(t, 4)[3].id
	joinWithDeadline(h, ids[0], d, 100, time.Minute)
	h.must(NewRecordReceipts(h.fullReceipts(2, []peer.ID{ids[0], d})[:2], h.tick()))
	res := h.must(NewRemoveMember(ids[1], h.now.Add(time.Minute), h.tick()))
	if res.Aborted != 2 || res.Opened != 3 {
		t.Fatalf("remove result: %+v", res)
	}
	g3, _ := h.l.Open()
	if len(g3.Members) != 3 || g3.Joiners[0] != d || len(g3.Removals) != 1 || g3.Removals[0] != ids[1] {
		t.Fatalf("generation 3: %+v", g3)
	}
	if m, _ := h.l.Member(d); m.Status != StatusJoining {
		t.Fatalf("joiner must stay joining: %s", m.Status)
	}
	// R1: no receipt where the removed member is owner or holder survives.
	for _, o := range ids {
		if h.l.ServeAllowed(1, ids[1], o) == nil || h.l.ServeAllowed(1, o, ids[1]) == nil {
			t.Fatal("removed member's envelopes still servable")
		}
	}
	if !errors.Is(h.l.ServeAllowed(1, ids[1], ids[0]), ErrOwnerRemoved) {
		t.Fatal("want ErrOwnerRemoved")
	}
	if cov := h.l.Coverage(ids[1]); cov.CanUnlock {
		t.Fatal("removed owner can unlock")
	}
}

func TestRetireRules(t *testing.T) {
	h, ids := cluster(t, 3)
	a, b, c := ids[0], ids[1], ids[2]
	h.must(NewOpenGeneration(h.now.Add(time.Minute), h.tick()))
	// a and b escrowed with margin in 2 (c holds their shares too); c only
	// has its self-receipt: 2 commits, 1 is retained for c (G4).
	var rs []Receipt
	for _, o := range []peer.ID{a, b} {
		for _, hd := range []peer.ID{a, b, c} {
			rs = append(rs, signed(t, testCluster, 2, o, hd, digestOf(2, o, hd)))
		}
	}
	rs = append(rs, signed(t, testCluster, 2, c, c, digestOf(2, c, c)))
	res := h.must(NewRecordReceipts(rs, h.tick()))
	if res.Committed != 2 || len(res.Retired) != 0 {
		t.Fatalf("commit: %+v", res)
	}
	if bl := h.l.RetentionBlockers(1); len(bl) != 1 || bl[0] != c {
		t.Fatalf("blockers: %v", bl)
	}
	cov := h.l.Coverage(c)
	if cov.Generation != 1 || !cov.CanUnlock || cov.SharesHeld != 3 {
		t.Fatalf("c must unlock with generation 1 (G5): %+v", cov)
	}
	if _, err := h.apply(NewRetireGeneration(1, h.tick())); !errors.Is(err, ErrRetentionRequired) {
		t.Fatalf("retire retained: %v", err)
	}
	if _, err := h.apply(NewRetireGeneration(2, h.tick())); !errors.Is(err, ErrRetireCurrent) {
		t.Fatalf("retire current: %v", err)
	}
	// Removing c lets generation 1 go: no active member of the current
	// generation needs it any more.
	res = h.must(NewRemoveMember(c, h.now.Add(time.Minute), h.tick()))
	if len(res.Retired) != 1 || res.Retired[0] != 1 || res.Opened != 3 {
		t.Fatalf("remove: %+v", res)
	}
	if _, err := h.apply(NewRetireGeneration(1, h.tick())); !errors.Is(err, ErrGenerationRetired) {
		t.Fatalf("retire retired: %v", err)
	}
	if _, err := h.apply(NewRetireGeneration(3, h.tick())); !errors.Is(err, ErrGenerationNotCommitted) {
		t.Fatalf("retire open: %v", err)
	}
	if _, err := h.apply(NewAbortGeneration(1, h.tick())); !errors.Is(err, ErrGenerationRetired) {
		t.Fatalf("abort retired: %v", err)
	}
	if _, err := h.apply(NewAbortGeneration(2, h.tick())); !errors.Is(err, ErrGenerationCommitted) {
		t.Fatalf("abort committed: %v", err)
	}
	h.now = h.now.Add(time.Hour)
	h.must(NewAbortGeneration(3, h.now))
	if _, err := h.apply(NewAbortGeneration(3, h.tick())); !errors.Is(err, ErrGenerationAborted) {
		t.Fatalf("abort aborted: %v", err)
	}
	if _, err := h.apply(NewRetireGeneration(3, h.tick())); !errors.Is(err, ErrGenerationAborted) {
		t.Fatalf("retire aborted: %v", err)
	}
	if _, err := h.apply(NewRetireGeneration(9, h.tick())); !errors.Is(err, ErrUnknownGeneration) {
		t.Fatalf("retire unknown: %v", err)
	}
}

// rejectEnv is the state a rejection case starts from: a committed
// 3-member cluster (a, b, c) with generation 2 open for joiner d, one
// removed member r, one invite (hash 50, unused) by a, and e, a stranger.
type rejectEnv struct {
	h             *harness
	a, b, c, d, e peer.ID
	r             peer.ID
}

func newRejectEnv(t *testing.T) *rejectEnv {
	h, ids := cluster(t, 4)
	ks := keys(t, 6)
	env := &rejectEnv{h: h, a: ids[0], b: ids[1], c: ids[2], r: ids[3], d: ks[4].id, e: ks[5].id}
	h.must(NewRemoveMember(env.r, h.now.Add(time.Hour), h.tick()))
	g, _ := h.l.Open()
	h.must(NewRecordReceipts(h.fullReceipts(g.Number, g.Members), h.tick()))
	h.must(NewAddInvite(inviteHash(49), invitePub(49), h.now.Add(time.Hour), env.a, h.tick()))
	h.must(NewConsumeInvite(inviteHash(49), env.d, testCluster, h.now.Add(time.Hour), h.tick()))
	h.must(NewAddInvite(inviteHash(50), invitePub(50), h.now.Add(time.Hour), env.a, h.tick()))
	return env
}

func rawCommand(mut func(c *pb.Command)) []byte {
	c := &pb.Command{
		Version: CommandVersion, IssuedAt: t0.UnixNano(), Author: []byte(keyPool[0].id), Seq: 1, Signature: make([]byte, 64),
		Body: &pb.Command_OpenGeneration{OpenGeneration: &pb.OpenGeneration{Timeout: int64(time.Hour)}},
	}
	mut(c)
	b, _ := proto.Marshal(c)
	return b
}

func TestRejections(t *testing.T) {
	dl := func(env *rejectEnv) time.Time { return env.h.now.Add(time.Hour) }
	type tc struct {
		name string
		prep func(env *rejectEnv)
		cmd  func(env *rejectEnv) []byte
		want error
	}
	enc := func(f func(env *rejectEnv) *pb.Command) func(env *rejectEnv) []byte {
		return func(env *rejectEnv) []byte {
			c := f(env)
			env.h.sign(c, env.h.naturalAuthor(c))
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
			if err != nil {
				panic(err)
			}
			return b
		}
	}
	sig := func(env *rejectEnv, gen uint64, o, hd peer.ID) Receipt {
		return signed(env.h.tb, testCluster, gen, o, hd, digestOf(gen, o, hd))
	}
	cases := []tc{
		// Decoding.
		{"too large", nil, func(*rejectEnv) []byte { return make([]byte, MaxCommandSize+1) }, ErrCommandTooLarge},
		{"malformed", nil, func(*rejectEnv) []byte { return []byte{0xff, 0xff, 0xff} }, ErrMalformedCommand},
		{"version 0", nil, func(*rejectEnv) []byte { return rawCommand(func(c *pb.Command) { c.Version = 0 }) }, ErrUnsupportedVersion},
		{"version 1", nil, func(*rejectEnv) []byte { return rawCommand(func(c *pb.Command) { c.Version = 1 }) }, ErrUnsupportedVersion},
		{"no body", nil, func(*rejectEnv) []byte { return rawCommand(func(c *pb.Command) { c.Body = nil }) }, ErrEmptyCommand},
		{"no time", nil, func(*rejectEnv) []byte { return rawCommand(func(c *pb.Command) { c.IssuedAt = 0 }) }, ErrBadTime},
		{"bad cluster id", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewBootstrap("0123456789ABCDEF0123456789ABCDEF", env.a, env.h.tick())
		}), ErrBadClusterID},
		{"bad peer id", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewSetAddrs(peer.ID("not a peer"), nil, env.h.tick())
		}), ErrBadPeerID},
		{"bad invite hash", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewAddInvite([]byte("short"), invitePub(0), dl(env), env.a, env.h.tick())
		}), ErrBadInviteHash},
		{"bad digest", nil, enc(func(env *rejectEnv) *pb.Command {
			r := sig(env, 3, env.a, env.b)
			r.Digest = r.Digest[:31]
			return NewRecordReceipts([]Receipt{r}, env.h.tick())
		}), ErrBadDigest},
		{"generation zero", nil, enc(func(env *rejectEnv) *pb.Command { return NewAbortGeneration(0, env.h.tick()) }), ErrBadGeneration},
		{"too many receipts", nil, enc(func(env *rejectEnv) *pb.Command {
			rs := make([]Receipt, MaxReceiptsPerBatch+1)
			for i := range rs {
				rs[i] = Receipt{Generation: 3, Owner: env.a, Holder: env.b, Split: testSplit, Digest: make([]byte, 32), Signature: []byte{1}}
			}
			return NewRecordReceipts(rs, env.h.tick())
		}), ErrTooManyReceipts},
		{"empty receipts", nil, enc(func(env *rejectEnv) *pb.Command { return NewRecordReceipts(nil, env.h.tick()) }), ErrEmptyCommand},
		{"too many addrs", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewSetAddrs(env.a, make([]string, MaxAddrs+1), env.h.tick())
		}), ErrBadAddrs},
		{"addr with space", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewSetAddrs(env.a, []string{"/ip4/1.2.3.4 /tcp/1"}, env.h.tick())
		}), ErrBadAddrs},
		{"joiner addr with newline", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInviteWithAddrs(inviteHash(1), env.e, testCluster, []string{"/ip4/1.2.3.4/tcp/1\n"}, time.Time{}, env.h.tick())
		}), ErrBadAddrs},
		{"too many joiner addrs", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInviteWithAddrs(inviteHash(1), env.e, testCluster, make([]string, MaxAddrs+1), time.Time{}, env.h.tick())
		}), ErrBadAddrs},
		{"key check too long", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordKeyCheck(env.a, make([]byte, MaxKeyCheckSize+1), env.h.tick())
		}), ErrBadKeyCheck},
		{"negative timeout", nil, enc(func(env *rejectEnv) *pb.Command {
			c := NewConsumeInvite(inviteHash(50), env.e, testCluster, time.Time{}, env.h.tick())
			c.GetConsumeInvite().Timeout = -1
			return c
		}), ErrBadTimeout},

		// Bootstrap.
		{"bootstrap twice", nil, enc(func(env *rejectEnv) *pb.Command { return NewBootstrap(testCluster, env.e, env.h.tick()) }), ErrAlreadyBootstrapped},

		// AddInvite.
		{"invite by stranger", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewAddInvite(inviteHash(60), invitePub(60), dl(env), env.e, env.h.tick())
		}), ErrNotMember},
		{"invite by joiner", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewAddInvite(inviteHash(60), invitePub(60), dl(env), env.d, env.h.tick())
		}), ErrNotActive},
		{"invite by removed", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewAddInvite(inviteHash(60), invitePub(60), dl(env), env.r, env.h.tick())
		}), ErrMemberRemoved},
		{"invite already expired", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewAddInvite(inviteHash(60), invitePub(60), env.h.now, env.a, env.h.now)
		}), ErrInviteExpired},
		{"duplicate invite", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewAddInvite(inviteHash(50), invitePub(50), dl(env), env.a, env.h.tick())
		}), ErrDuplicateInvite},
		{"too many invites", func(env *rejectEnv) {
			for i := 1000; i < 1000+MaxLiveInvites-1; i++ {
				env.h.must(NewAddInvite(inviteHash(i), invitePub(i), dl(env), env.a, env.h.now))
			}
		}, enc(func(env *rejectEnv) *pb.Command {
			return NewAddInvite(inviteHash(60), invitePub(60), dl(env), env.a, env.h.tick())
		}), ErrTooManyInvites},

		// ConsumeInvite.
		{"wrong cluster", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.e, "ffffffffffffffffffffffffffffffff", time.Time{}, env.h.tick())
		}), ErrClusterMismatch},
		{"forged invite", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(61), env.e, testCluster, time.Time{}, env.h.tick())
		}), ErrUnknownInvite},
		{"used invite", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(49), env.e, testCluster, time.Time{}, env.h.tick())
		}), ErrInviteUsed},
		{"expired invite", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.e, testCluster, time.Time{}, env.h.now.Add(time.Hour))
		}), ErrInviteExpired},
		{"revoked invite", func(env *rejectEnv) {
			env.h.must(NewAddInvite(inviteHash(62), invitePub(62), dl(env), env.b, env.h.tick()))
			env.h.must(NewRemoveMember(env.b, dl(env), env.h.tick()))
		}, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(62), env.e, testCluster, time.Time{}, env.h.tick())
		}), ErrInviteRevoked},
		{"joiner already member", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.b, testCluster, time.Time{}, env.h.tick())
		}), ErrAlreadyMember},
		{"joiner already joining", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.d, testCluster, time.Time{}, env.h.tick())
		}), ErrAlreadyMember},
		{"joiner was removed", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.r, testCluster, time.Time{}, env.h.tick())
		}), ErrMemberRemoved},
		{"join deadline in the past", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewConsumeInvite(inviteHash(50), env.e, testCluster, env.h.now, env.h.now.Add(time.Second))
		}), ErrBadTimeout},

		// OpenGeneration.
		{"open while open", nil, enc(func(env *rejectEnv) *pb.Command { return NewOpenGeneration(dl(env), env.h.tick()) }), ErrGenerationOpen},
		{"open with past deadline", func(env *rejectEnv) {
			env.h.must(NewRecordReceipts(env.h.fullReceipts(3, []peer.ID{env.a, env.b, env.c, env.d}), env.h.tick()))
		}, enc(func(env *rejectEnv) *pb.Command { return NewOpenGeneration(env.h.now, env.h.now.Add(time.Second)) }), ErrBadTimeout},

		// RecordReceipts.
		{"bad signature", nil, enc(func(env *rejectEnv) *pb.Command {
			r := sig(env, 3, env.a, env.b)
			r.Signature = sig(env, 3, env.a, env.c).Signature
			return NewRecordReceipts([]Receipt{r}, env.h.tick())
		}), ErrBadSignature},
		{"signature over other digest", nil, enc(func(env *rejectEnv) *pb.Command {
			r := sig(env, 3, env.a, env.b)
			r.Digest = digestOf(99, env.a, env.b)
			return NewRecordReceipts([]Receipt{r}, env.h.tick())
		}), ErrBadSignature},
		{"receipt unknown generation", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 9, env.a, env.b)}, env.h.tick())
		}), ErrUnknownGeneration},
		{"receipt older committed generation", func(env *rejectEnv) {
			// 3 commits without c, so 2 is kept for c but is no longer current.
			var rs []Receipt
			for _, o := range []peer.ID{env.a, env.b, env.d} {
				for _, hd := range []peer.ID{env.a, env.b, env.d} {
					rs = append(rs, sig(env, 3, o, hd))
				}
			}
			if res := env.h.must(NewRecordReceipts(rs, env.h.tick())); res.Committed != 3 {
				env.h.tb.Fatalf("3 did not commit: %+v", res)
			}
		}, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 2, env.c, env.b)}, env.h.tick())
		}), ErrGenerationNotOpen},
		{"receipt retired generation", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 1, env.a, env.b)}, env.h.tick())
		}), ErrGenerationRetired},
		{"receipt aborted generation", func(env *rejectEnv) {
			env.h.must(NewAbortGeneration(3, env.h.now.Add(2*time.Hour)))
		}, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.a, env.b)}, env.h.now.Add(2*time.Hour))
		}), ErrGenerationAborted},
		{"receipt owner not in generation", func(env *rejectEnv) {
			env.h.must(NewAddInvite(inviteHash(63), invitePub(63), dl(env), env.a, env.h.tick()))
			env.h.must(NewConsumeInvite(inviteHash(63), env.e, testCluster, dl(env), env.h.tick()))
		}, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.e, env.a)}, env.h.tick())
		}), ErrOwnerNotInGeneration},
		{"receipt holder not in generation", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.a, env.e)}, env.h.tick())
		}), ErrHolderNotInGeneration},
		{"receipt owner removed", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.r, env.a)}, env.h.tick())
		}), ErrMemberRemoved}, // the owner authors its receipts
		{"receipt holder removed", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{sig(env, 3, env.a, env.r)}, env.h.tick())
		}), ErrHolderRemoved},
		{"conflicting receipt", func(env *rejectEnv) {
			env.h.must(NewRecordReceipts([]Receipt{sig(env, 3, env.a, env.b)}, env.h.tick()))
		}, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{signed(env.h.tb, testCluster, 3, env.a, env.b, digestOf(77, env.a, env.b))}, env.h.tick())
		}), ErrDuplicateReceipt},
		{"conflicting receipt in one batch", nil, enc(func(env *rejectEnv) *pb.Command {
			return NewRecordReceipts([]Receipt{
				sig(env, 3, env.a, env.b),
				signed(env.h.tb, testCluster, 3, env.a, env.b, digestOf(77, env.a, env.b)),
			}, env.h.tick())
		}), ErrDuplicateReceipt},
		{"batch is all or nothing", nil, enc(func(env *rejectEnv) *pb.Command {
			bad := sig(env, 3, env.a, env.c)
			bad.Signature[0] ^= 1
			return NewRecordReceipts([]Receipt{sig(env, 3, env.a, env.b), sig(env, 3, env.a, env.a), bad}, env.h.tick())
		}), ErrBadSignature},

		// AbortGeneration.
		{"abort before deadline", nil, enc(func(env *rejectEnv) *pb.Command { return NewAbortGeneration(3, env.h.tick()) }), ErrDeadlineNotReached},
		{"abort unknown", nil, enc(func(env *rejectEnv) *pb.Command { return NewAbortGeneration(9, env.h.tick()) }), ErrUnknownGeneration},
		{"abort committed", nil, enc(func(env *rejectEnv) *pb.Command { return NewAbortGeneration(2, env.h.now.Add(time.Hour)) }), ErrGenerationCommitted},
		{"abort retired", nil, enc(func(env *rejectEnv) *pb.Command { return NewAbortGeneration(1, env.h.now.Add(time.Hour)) }), ErrGenerationRetired},

		// RetireGeneration.
		{"retire open", nil, enc(func(env *rejectEnv) *pb.Command { return NewRetireGeneration(3, env.h.tick()) }), ErrGenerationNotCommitted},
		{"retire current", nil, enc(func(env *rejectEnv) *pb.Command { return NewRetireGeneration(2, env.h.tick()) }), ErrRetireCurrent},
		{"retire retired", nil, enc(func(env *rejectEnv) *pb.Command { return NewRetireGeneration(1, env.h.tick()) }), ErrGenerationRetired},

		// RemoveMember.
		{"remove stranger", nil, enc(func(env *rejectEnv) *pb.Command { return NewRemoveMember(env.e, dl(env), env.h.tick()) }), ErrNotMember},
		{"remove removed", nil, enc(func(env *rejectEnv) *pb.Command { return NewRemoveMember(env.r, dl(env), env.h.tick()) }), ErrMemberRemoved},
		{"remove with past deadline", nil, enc(func(env *rejectEnv) *pb.Command { return NewRemoveMember(env.b, env.h.now, env.h.now) }), ErrBadTimeout},
		{"remove last active", func(env *rejectEnv) {
			env.h.must(NewRemoveMember(env.b, dl(env), env.h.tick()))
			env.h.must(NewRemoveMember(env.c, dl(env), env.h.tick()))
		}, enc(func(env *rejectEnv) *pb.Command { return NewRemoveMember(env.a, dl(env), env.h.tick()) }), ErrLastMember},

		// SetAddrs.
		{"addrs of stranger", nil, enc(func(env *rejectEnv) *pb.Command { return NewSetAddrs(env.e, []string{"/dns/x"}, env.h.tick()) }), ErrNotMember},
		{"addrs of removed", nil, enc(func(env *rejectEnv) *pb.Command { return NewSetAddrs(env.r, []string{"/dns/x"}, env.h.tick()) }), ErrMemberRemoved},

		// RecordKeyCheck.
		{"key check not escrowed", nil, enc(func(env *rejectEnv) *pb.Command { return NewRecordKeyCheck(env.d, []byte("kc"), env.h.tick()) }), ErrNotEscrowed},
		{"key check of stranger", nil, enc(func(env *rejectEnv) *pb.Command { return NewRecordKeyCheck(env.e, []byte("kc"), env.h.tick()) }), ErrNotMember},
		{"key check mismatch", func(env *rejectEnv) {
			env.h.must(NewRecordKeyCheck(env.a, []byte("kc-1"), env.h.tick()))
			env.h.must(NewRecordKeyCheck(env.a, []byte("kc-1"), env.h.tick())) // idempotent
		}, enc(func(env *rejectEnv) *pb.Command { return NewRecordKeyCheck(env.a, []byte("kc-2"), env.h.tick()) }), ErrKeyCheckMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := newRejectEnv(t)
			if c.prep != nil {
				c.prep(env)
			}
			before, err := env.h.l.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			data := c.cmd(env)
			stamp := env.h.now.UnixNano()
			if d, derr := DecodeCommand(data); derr == nil {
				stamp = d.GetIssuedAt() // the harness's leader stamps each command's issued_at
			}
			_, err = env.h.l.Apply(stamp, data)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if code := ErrorCode(err); ErrorByCode(code) != c.want {
				t.Fatalf("code %q does not map back to %v", code, c.want)
			}
			after, _ := env.h.l.Snapshot()
			if !bytes.Equal(before, after) {
				t.Fatal("rejected command changed the state")
			}
		})
	}
}

func TestIdempotentReceipts(t *testing.T) {
	env := newRejectEnv(t)
	h := env.h
	r := signed(t, testCluster, 3, env.a, env.b, digestOf(3, env.a, env.b))
	res := h.must(NewRecordReceipts([]Receipt{r, r}, h.tick()))
	if res.Recorded != 1 || res.Duplicates != 1 {
		t.Fatalf("first: %+v", res)
	}
	res = h.must(NewRecordReceipts([]Receipt{r}, h.tick()))
	if res.Recorded != 0 || res.Duplicates != 1 {
		t.Fatalf("again: %+v", res)
	}
}

func TestKeyCheckAtFirstEscrow(t *testing.T) {
	env := newRejectEnv(t)
	h := env.h
	// d is escrowed in the open generation 3 (t=3) before it commits.
	var rs []Receipt
	for _, hd := range []peer.ID{env.a, env.b, env.d} {
		rs = append(rs, signed(t, testCluster, 3, env.d, hd, digestOf(3, env.d, hd)))
	}
	h.must(NewRecordReceipts(rs, h.tick()))
	if d := h.l.Duties(env.d); !d.NeedsKeyCheck || d.Open != 3 || len(d.PushTo) != 1 || d.PushTo[0] != env.c {
		t.Fatalf("duties: %+v", d)
	}
	h.must(NewRecordKeyCheck(env.d, []byte("kc-d"), h.tick()))
	if v, ok := h.l.KeyCheck(env.d); !ok || string(v) != "kc-d" {
		t.Fatal("key check not recorded")
	}
	if h.l.Duties(env.d).NeedsKeyCheck {
		t.Fatal("key check still needed")
	}
}
