package testnet

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// The verifier, in the spirit of hashicorp/raft's fuzzy/verifier.go: after a
// fault, the cluster must come back to a state where
//
//   - every member runs and answers (members-running, members-answer),
//     knows the same single leader (one-leader), in one cluster
//     (one-cluster), under its own identity (identity), and is unlocked
//     (unlocked);
//   - its derived key (`key --purpose chaos`) is byte for byte the one it
//     had before the fault (same-derived-keys);
//   - every node sees one current generation, the same one
//     (one-current-generation), and none open (none-open);
//   - the active members are exactly the test's members, all voters
//     (membership), and a faulted joiner is admitted or gone
//     (joiners-settled);
//   - removed nodes stay out of the ledger's active rows
//     (removed-stay-out) and locked, `key` exiting 3 (removed-locked);
//   - the escrow invariant holds (escrow-recoverable, escrow_test.go).
//
// A failed check names its invariant by the tag in parentheses; a failed
// settle (verifyError) adds the trail of invariants that failed on the way
// and the evidence: every node's view and one member's ledger.
//
// A joiner whose fate was open (its join was faulted) is settled on the way:
// admitted, it becomes a member; refused or gone, its daemon is stopped.
//
// check returns the first condition not yet so (why), or a safety violation (fatal)
// that no later state can undo: a derived key that changed, a removed node
// that unlocked or came back, a member dropped without a vote.

// checkOpts selects the verifier's parts.
type checkOpts struct {
	skipEscrow bool
}

func (c *tnet) check(o checkOpts) (why, fatal *violation) {
	type answer struct {
		st  node.Status
		err error
	}
	members := c.members()
	for _, m := range members {
		if !c.alive(m.i) {
			return vio("members-running", "member node %d is not running", m.i), nil
		}
	}
	sts := map[int]answer{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	joiners := c.byRole(roleJoining)
	for _, m := range append(slices.Clone(members), joiners...) {
		if m.role == roleJoining && !c.alive(m.i) {
			continue
		}
		wg.Go(func() {
			st, err := c.status(m.i)
			mu.Lock()
			sts[m.i] = answer{st, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, m := range members {
		if a := sts[m.i]; a.err != nil {
			return vio("members-answer", "%v", a.err), nil
		}
	}

	// One leader that everyone knows.
	var leaderID string
	leaders := 0
	for _, m := range members {
		st := sts[m.i].st
		switch {
		case st.Raft.Leader == "":
			return vio("one-leader", "node %d knows no leader", m.i), nil
		case leaderID == "":
			leaderID = st.Raft.Leader
		case st.Raft.Leader != leaderID:
			return vio("one-leader", "node %d follows %s, others %s", m.i, short(st.Raft.Leader), short(leaderID)), nil
		}
		if st.Raft.State == "leader" {
			leaders++
		}
		if st.PeerID != m.peer.String() {
			return nil, vio("identity", "node %d answers as %s, its identity is %s", m.i, st.PeerID, m.peer)
		}
	}
	lead := c.byPeer(leaderID)
	if lead == nil || (lead.role != roleMember && lead.role != roleJoining) {
		return vio("one-leader", "the leader %s is not a member", short(leaderID)), nil
	}
	la, ok := sts[lead.i]
	if !ok || la.err != nil {
		return vio("one-leader", "the leader, joiner node %d, does not answer", lead.i), nil
	}
	lst := la.st
	ledger := map[string]node.MemberInfo{}
	for _, m := range lst.Members {
		ledger[m.PeerID] = m
	}

	// Settle the joiners whose join was faulted (one of them may lead
	// already). Only from a leader whose ledger has caught up with every
	// answer heard: a leader just elected after a restart answers from the
	// ledger it had before it committed its first entry, which may not list
	// a joiner the cluster has admitted (seed 542413994 killed one so).
	if len(joiners) > 0 {
		if lst.Raft.State != "leader" {
			return vio("joiners-settled", "the leader node %d does not say it leads yet", lead.i), nil
		}
		for i, a := range sts {
			if a.err == nil && a.st.Raft.AppliedIndex > lst.Raft.AppliedIndex {
				return vio("joiners-settled", "the leader node %d has applied %d, node %d %d", lead.i, lst.Raft.AppliedIndex, i, a.st.Raft.AppliedIndex), nil
			}
		}
	}
	for _, j := range joiners {
		switch s := ledger[j.peer.String()].Status; {
		case s == "active":
			j.role = roleMember
			return vio("joiners-settled", "joiner node %d was admitted", j.i), nil
		case s == "rejected", s == "" && !c.alive(j.i):
			// Refused, or gone before its invite was consumed: stop it.
			c.t.Logf("settle: joiner node %d is %q in the ledger of leader node %d (applied %d); stopping it", j.i, s, lead.i, lst.Raft.AppliedIndex)
			if err := c.kill(j.i); err != nil {
				return vio("joiners-settled", "%v", err), nil
			}
			j.role = roleGone
		default:
			return vio("joiners-settled", "joiner node %d is %q in the ledger", j.i, s), nil
		}
	}

	if leaders != 1 {
		return vio("one-leader", "%d nodes say they lead", leaders), nil
	}

	// One current generation, the same everywhere, none open.
	cur := lst.Generation.Current
	for _, m := range members {
		st := sts[m.i].st
		if o := st.Generation.Open; o != nil {
			return vio("none-open", "node %d sees generation %d open", m.i, o.Number), nil
		}
		if st.Generation.Current == nil || cur == nil || *st.Generation.Current != *cur {
			return vio("one-current-generation", "node %d's current generation is %v, the leader's %v", m.i, deref(st.Generation.Current), deref(cur)), nil
		}
		if st.ClusterID != lst.ClusterID {
			return nil, vio("one-cluster", "node %d is in cluster %s, the leader in %s", m.i, st.ClusterID, lst.ClusterID)
		}
	}

	// The members are exactly the test's members, and removed nodes stay out.
	want := map[string]bool{}
	for _, m := range members {
		want[m.peer.String()] = true
		e, ok := ledger[m.peer.String()]
		switch {
		case !ok:
			return vio("membership", "member node %d is not in the leader's ledger", m.i), nil
		case e.Status == "removed" || e.Status == "lapsed" || e.Status == "rejected":
			return nil, vio("membership", "member node %d is %s in the ledger although the test removed nothing (%s)", m.i, e.Status, e.Reason)
		case e.Status != "active":
			return vio("membership", "member node %d is %s", m.i, e.Status), nil
		case !e.Voter:
			return vio("membership", "member node %d is not a voter", m.i), nil
		}
	}
	for id, e := range ledger {
		if e.Status != "active" || want[id] {
			continue
		}
		if n := c.byPeer(id); n != nil && n.role == roleRemoved {
			return nil, vio("removed-stay-out", "removed node %d is active again", n.i)
		}
		return vio("membership", "%s is active but not a member the test knows", short(id)), nil
	}
	for _, r := range c.byRole(roleRemoved) {
		if s := ledger[r.peer.String()].Status; s != "removed" {
			return vio("removed-stay-out", "removed node %d is %q in the ledger", r.i, s), nil
		}
	}

	// Unlocked, with the same derived keys; removed nodes locked.
	for _, m := range members {
		if st := sts[m.i].st; st.Lock != node.LockUnlocked {
			return vio("unlocked", "node %d is %s (%s)", m.i, st.Lock, st.Unlock.Reason), nil
		}
	}
	type keyAnswer struct {
		key  string
		code int
		err  error
	}
	keys := map[int]keyAnswer{}
	probe := append(members, c.byRole(roleRemoved)...)
	for _, n := range probe {
		if !c.alive(n.i) {
			continue
		}
		wg.Go(func() {
			k, code, err := c.key(n.i)
			mu.Lock()
			keys[n.i] = keyAnswer{k, code, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, r := range c.byRole(roleRemoved) {
		a, ok := keys[r.i]
		if ok && a.err == nil && a.code == 0 {
			return nil, vio("removed-locked", "removed node %d derived a key: it is not locked", r.i)
		}
	}
	for _, m := range members {
		a := keys[m.i]
		switch {
		case a.err != nil:
			return vio("same-derived-keys", "%v", a.err), nil
		case a.code != 0:
			return vio("same-derived-keys", "key on node %d: exit %d: %s", m.i, a.code, strings.TrimSpace(a.key)), nil
		case m.key == "":
			m.key = a.key
		case a.key != m.key:
			return nil, vio("same-derived-keys", "node %d derives a different key than before", m.i)
		}
	}

	// The leader's generations agree, and the escrow invariant holds.
	gens, err := c.generations(lead.i)
	if err != nil {
		return vio("escrow-recoverable", "%v", err), nil
	}
	current, open := 0, 0
	for _, g := range gens {
		if g.Current {
			current++
			if g.Number != *cur {
				return vio("one-current-generation", "generations names %d current, status %d", g.Number, *cur), nil
			}
		}
		if g.State == "open" {
			open++
		}
	}
	if current != 1 || open != 0 {
		return vio("none-open", "%d current and %d open generations", current, open), nil
	}
	if o.skipEscrow {
		return nil, nil
	}
	if err := c.checkEscrow(lst, gens); err != nil {
		return vio("escrow-recoverable", "%v", err), nil
	}
	return nil, nil
}

// A violation is a verifier condition that does not hold: the invariant's
// name (one of the list at the top of this file, as a short tag) and what was
// seen.
type violation struct {
	Invariant string
	Detail    string
}

func (v *violation) Error() string { return v.Invariant + ": " + v.Detail }

func vio(invariant, format string, args ...any) *violation {
	return &violation{invariant, fmt.Sprintf(format, args...)}
}

// verifyError is a failed settle: the invariant that failed last (or the
// safety violation), how long it had failed, the trail of what failed on
// the way, and the cluster as every node saw it then.
type verifyError struct {
	safety   bool
	v        *violation
	timeout  time.Duration
	since    time.Duration // how long v.Invariant had been failing at the end
	trail    []string
	evidence string
}

func (e *verifyError) Error() string {
	var b strings.Builder
	if e.safety {
		fmt.Fprintf(&b, "SAFETY: invariant %s violated: %s", e.v.Invariant, e.v.Detail)
	} else {
		fmt.Fprintf(&b, "%v within %v: invariant %s fails (for the last %v): %s",
			errNotRecovered, e.timeout, e.v.Invariant, e.since.Round(100*time.Millisecond), e.v.Detail)
	}
	if len(e.trail) > 0 {
		fmt.Fprintf(&b, "\n  trail (when each invariant began to fail, since the check began):\n    %s", strings.Join(e.trail, "\n    "))
	}
	if e.evidence != "" {
		fmt.Fprintf(&b, "\n  evidence:\n%s", e.evidence)
	}
	return b.String()
}

func (e *verifyError) Unwrap() error {
	if e.safety {
		return e.v
	}
	return errNotRecovered
}

// settle polls check until the cluster is healthy, a safety violation, or
// timeout; it returns how long recovery took. Its error is a *verifyError.
func (c *tnet) settle(timeout time.Duration, o checkOpts) (time.Duration, error) {
	start := time.Now()
	var (
		last      *violation
		lastSince time.Duration
		trail     []string
	)
	note := func(v *violation) {
		at := time.Since(start)
		if last == nil || last.Invariant != v.Invariant {
			lastSince = at
			if len(trail) < 40 {
				d := v.Detail
				if len(d) > 200 {
					d = d[:200] + "…"
				}
				trail = append(trail, fmt.Sprintf("+%v %s: %s", at.Round(100*time.Millisecond), v.Invariant, d))
			}
		}
		last = v
	}
	for {
		w, fatal := c.check(o)
		if fatal != nil {
			note(fatal)
			return time.Since(start), &verifyError{safety: true, v: fatal, trail: trail, evidence: c.evidence()}
		}
		if w == nil {
			return time.Since(start), nil
		}
		note(w)
		if time.Since(start) > timeout {
			return time.Since(start), &verifyError{v: last, timeout: timeout, since: time.Since(start) - lastSince,
				trail: trail, evidence: c.evidence()}
		}
		time.Sleep(100 * time.Millisecond) // pacing between polls of an observable condition
	}
}

// evidence is the cluster as each node sees it, for a failure dump: one line
// per node (role, process state, Raft view, lock, generations), then the
// ledger of one member that answers: its member rows and every generation
// with its holder matrix, peers shown as node numbers. No key material.
func (c *tnet) evidence() string {
	var b strings.Builder
	idx := make([]int, 0, len(c.nodes))
	for i := range c.nodes {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	name := func(id string) string {
		if n := c.byPeer(id); n != nil {
			return fmt.Sprintf("n%d", n.i)
		}
		return short(id)
	}
	var ledger *node.Status
	var from int
	for _, i := range idx {
		n := c.nodes[i]
		proc := "down"
		if p := c.pid(i); p > 0 && c.alive(i) {
			proc = fmt.Sprintf("pid %d %s", p, procState(p))
		}
		fmt.Fprintf(&b, "    node %d %-7s %-14s", i, n.role, proc)
		if proc == "down" {
			b.WriteString("\n")
			continue
		}
		st, err := c.status(i)
		if err != nil {
			fmt.Fprintf(&b, " status: %v\n", err)
			continue
		}
		open := "none"
		if st.Generation.Open != nil {
			open = fmt.Sprintf("%d (%d members, t=%d, deadline %s)", st.Generation.Open.Number, st.Generation.Open.Members,
				st.Generation.Open.Threshold, st.Generation.Open.Deadline.UTC().Format("15:04:05.000"))
		}
		lock := string(st.Lock)
		if st.Unlock.Reason != "" {
			lock += " (" + st.Unlock.Reason + ")"
		}
		leader := "none"
		if st.Raft.Leader != "" {
			leader = name(st.Raft.Leader)
		}
		fmt.Fprintf(&b, " raft %s term %d applied %d leader %s | %s | gen current %v open %s\n",
			st.Raft.State, st.Raft.Term, st.Raft.AppliedIndex, leader, lock, deref(st.Generation.Current), open)
		if ledger == nil && n.role == roleMember && st.Raft.Leader != "" {
			ledger, from = &st, i
		}
	}
	if ledger == nil {
		return b.String()
	}
	fmt.Fprintf(&b, "    ledger of node %d:\n", from)
	for _, m := range ledger.Members {
		fmt.Fprintf(&b, "      member %-4s %-9s voter %-5v escrow gen %v held %d/%d behind %d %s\n",
			name(m.PeerID), m.Status, m.Voter, deref(m.EscrowGeneration), m.SharesHeld, m.Threshold, m.Behind, m.Reason)
	}
	gens, err := c.generations(from)
	if err != nil {
		fmt.Fprintf(&b, "      generations: %v\n", err)
		return b.String()
	}
	for _, g := range gens {
		names := make([]string, len(g.Members))
		for k, id := range g.Members {
			names[k] = name(id)
		}
		cur := ""
		if g.Current {
			cur = " current"
		}
		fmt.Fprintf(&b, "      gen %d %s%s t=%d members [%s] opened %s", g.Number, g.State, cur, g.Threshold,
			strings.Join(names, " "), g.OpenedAt.UTC().Format("15:04:05.000"))
		if len(g.Joiners) > 0 {
			js := make([]string, len(g.Joiners))
			for k, id := range g.Joiners {
				js[k] = name(id)
			}
			fmt.Fprintf(&b, " joiners [%s]", strings.Join(js, " "))
		}
		b.WriteString("\n")
		for row, has := range g.Matrix {
			if row >= len(names) {
				break
			}
			var hs []string
			for k, h := range has {
				if h && k < len(names) {
					hs = append(hs, names[k])
				}
			}
			fmt.Fprintf(&b, "        %s's shares at [%s]\n", names[row], strings.Join(hs, " "))
		}
	}
	return b.String()
}

var errNotRecovered = errors.New("not recovered")

func deref(p *uint64) any {
	if p == nil {
		return "none"
	}
	return *p
}

func short(id string) string {
	if len(id) > 16 {
		return id[:6] + "…" + id[len(id)-6:]
	}
	return id
}
