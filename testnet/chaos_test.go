package testnet

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// TestChaos is the fault suite of issue 12, in the spirit of hashicorp/raft's
// fuzzy/ and etcd's robustness tests: real daemons on a loopback testnet,
// faults injected at seeded moments (kill -9, SIGSTOP, a lost disk, churn),
// and after every fault the verifier (verify_test.go), whose escrow
// invariant (escrow_test.go) says that what the ledger calls escrowed can be
// recovered.
//
// Short mode (the default, in CI) runs one seed: every scenario once, in a
// seeded order, on one 5-node testnet, and stops after -chaos.maxfail (3)
// failed scenarios. -chaos.long runs -chaos.runs seeds (default 10), each on
// a fresh testnet, every scenario twice, and counts every failure:
//
//	go test ./testnet -run TestChaos -v                        # one random seed
//	go test ./testnet -run TestChaos -v -chaos.seed=42         # replay a seed
//	go test ./testnet -run TestChaos -v -chaos.long -timeout 2h
//
// The seed picks the order of the scenarios, the victims and the moments; the
// machine's scheduling does the rest, so a seed replays the same faults, not
// the same interleaving. A failing run keeps every daemon's log in a
// directory it names, and its message names the verifier's invariant that
// failed, the trail of invariants that failed on the way, and the evidence
// (every node's view, one member's ledger with its holder matrices). The
// summary table is logged at the end (and after each seed of a long run):
// per scenario its runs, the recoveries checked and failed, the median and
// max recovery time, the failed seeds and invariants, and the faults
// injected (joins, kill -9, SIGTERM, SIGSTOP, restarts, lost disks,
// removals), then the seeds that ran.
func TestChaos(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = rand.Uint64N(1<<31) + 1
	}
	runs := *chaosRuns
	if runs <= 0 {
		runs = 1
		if *chaosLong {
			runs = 10
		}
	}
	repeat := 1
	if *chaosLong {
		repeat = 2
		if !flagSet("chaos.maxfail") {
			*chaosFails = 0 // a long run counts every failure
		}
	}
	t.Logf("chaos seed %d (replay with -chaos.seed=%d), %d run(s), recovery bound %v", seed, seed, runs, *chaosBound)
	stats := newChaosStats()
	done := uint64(0)
	defer func() {
		t.Logf("chaos summary, %d seed(s) from %d (replay one with -chaos.seed=N):\n%s", done, seed, stats.table())
	}()
	for ; done < uint64(runs); done++ {
		if dl, ok := t.Deadline(); ok && done > 0 && time.Until(dl) < 12*time.Minute {
			t.Logf("stopping after %d seeds: the test deadline is near", done)
			break
		}
		if stats.tooMany() {
			break
		}
		runChaosSeed(t, seed+done, repeat, stats)
		if runs > 1 {
			// So that an interrupted long run still has its figures.
			t.Logf("after seed %d:\n%s", seed+done, stats.table())
		}
	}
}

var (
	chaosSeed  = flag.Uint64("chaos.seed", 0, "TestChaos: seed (0: a random one, always printed)")
	chaosLong  = flag.Bool("chaos.long", false, "TestChaos: many seeds, every scenario twice")
	chaosRuns  = flag.Int("chaos.runs", 0, "TestChaos: number of seeds (default 1, or 10 with -chaos.long)")
	chaosBound = flag.Duration("chaos.bound", 60*time.Second, "TestChaos: how long the cluster may take to recover from one fault")
	chaosOnly  = flag.String("chaos.only", "", "TestChaos: run only the scenarios whose names contain one of these comma-separated words")
	chaosFails = flag.Int("chaos.maxfail", 3, "TestChaos: stop after this many failed scenarios (0: never), so a broken build fails CI in minutes")
)

// chaosNodes is the testnet's size at the start of each seed; joins grow it
// and a removal trims it back once it reaches chaosMaxNodes.
const (
	chaosNodes    = 5
	chaosMaxNodes = 7
)

// A scenario injects one kind of fault and waits (ch.await) for recovery.
type scenario struct {
	name string
	run  func(ch *chaosRun) error
}

var chaosScenarios = []scenario{
	joinScenario("kill-follower-in-join", victimFollower, syscall.SIGKILL),
	joinScenario("kill-leader-in-join", victimLeader, syscall.SIGKILL),
	joinScenario("kill-joiner-in-join", victimJoiner, syscall.SIGKILL),
	joinScenario("pause-follower-in-join", victimFollower, syscall.SIGSTOP),
	joinScenario("pause-leader-in-join", victimLeader, syscall.SIGSTOP),
	{"cold-restart", (*chaosRun).coldRestart},
	{"rolling-restart", (*chaosRun).rollingRestart},
	{"holder-disk-loss", (*chaosRun).holderDiskLoss},
	{"churn", (*chaosRun).churn},
	{"open-generation-restart", (*chaosRun).openGenerationRestart},
}

func joinScenario(name string, who victimKind, sig syscall.Signal) scenario {
	return scenario{name, func(ch *chaosRun) error { return ch.joinFault(name, who, sig) }}
}

// chaosRun is one seed's run on one testnet.
type chaosRun struct {
	t     *testing.T
	seed  uint64
	r     *rand.Rand
	c     *tnet
	stats *chaosStats
	// scen is the scenario running, whose row counts the faults injected.
	scen string
}

// fault counts one injected fault of a kind (see faultKinds) against the
// running scenario.
func (ch *chaosRun) fault(kind string) { ch.stats.fault(ch.scen, kind) }

func runChaosSeed(t *testing.T, seed uint64, repeat int, stats *chaosStats) {
	stats.seeds = append(stats.seeds, seed)
	ch := &chaosRun{t: t, seed: seed, r: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)), stats: stats}
	var plan []scenario
	for range repeat {
		for _, sc := range chaosScenarios {
			if chosen(sc.name) {
				plan = append(plan, sc)
			}
		}
	}
	ch.r.Shuffle(len(plan), func(a, b int) { plan[a], plan[b] = plan[b], plan[a] })
	names := make([]string, len(plan))
	for k, s := range plan {
		names[k] = s.name
	}
	t.Logf("seed %d: plan %s", seed, strings.Join(names, ", "))
	defer func() {
		if ch.c != nil {
			ch.c.resumeAll()
			ch.c.s.teardown(false)
		}
	}()
	for _, s := range plan {
		if stats.tooMany() {
			t.Logf("seed %d: stopping after %d failed scenarios (-chaos.maxfail)", seed, stats.failed)
			return
		}
		if ch.c == nil {
			if err := ch.fresh(); err != nil {
				stats.fail("setup", seed, invariantOf(err))
				t.Errorf("seed %d: setup: %v", seed, err)
				return
			}
		}
		start := time.Now()
		ch.scen = s.name
		stats.row(s.name).started++
		err := s.run(ch)
		if err == nil {
			continue
		}
		var rec recordedErr
		if !errors.As(err, &rec) {
			stats.fail(s.name, seed, invariantOf(err))
		}
		stats.failed++
		logs := ch.c.keepLogs(fmt.Sprintf("seed%d-%s", seed, s.name))
		t.Errorf("seed %d: %s (after %v): %v\n(replay: go test ./testnet -run TestChaos -v -chaos.seed=%d; daemon logs kept in %s)\n%s",
			seed, s.name, time.Since(start).Round(time.Millisecond), err, seed, logs, ch.c.logTails(1500))
		// The cluster may be left in any state: go on on a fresh one.
		ch.c.resumeAll()
		ch.c.s.teardown(false)
		ch.c = nil
	}
}

// flagSet reports whether the named flag was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// chosen reports whether -chaos.only selects the scenario.
func chosen(name string) bool {
	if *chaosOnly == "" {
		return true
	}
	for w := range strings.SplitSeq(*chaosOnly, ",") {
		if w != "" && strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// fresh brings up a new testnet and waits until it is healthy.
func (ch *chaosRun) fresh() error {
	ch.c = newTnet(ch.t, chaosNodes)
	_, err := ch.c.settle(*chaosBound, checkOpts{})
	return err
}

func (ch *chaosRun) logf(format string, args ...any) {
	ch.t.Helper()
	ch.t.Logf("seed %d: "+format, append([]any{ch.seed}, args...)...)
}

// recordedErr is an error that await has already counted as a failure.
type recordedErr struct{ error }

func (e recordedErr) Unwrap() error { return e.error }

// await waits for the cluster to recover from a fault that ended at since,
// and records the recovery time (or the failure) under name.
func (ch *chaosRun) await(name string, since time.Time) error {
	_, err := ch.c.settle(*chaosBound, checkOpts{})
	took := time.Since(since)
	if err != nil {
		ch.stats.fail(name, ch.seed, invariantOf(err))
		return recordedErr{fmt.Errorf("%s: %w", name, err)}
	}
	ch.stats.ok(name, took)
	ch.logf("%s: recovered in %v (%d members)", name, took.Round(time.Millisecond), len(ch.c.members()))
	return nil
}

// pause is a seeded delay between a fault's steps: part of the fault's
// schedule, not a wait for a condition.
func (ch *chaosRun) pause(lo, hi time.Duration) time.Duration {
	d := lo + time.Duration(ch.r.Int64N(int64(hi-lo)+1))
	time.Sleep(d) // the fault's own schedule (see above)
	return d
}

func (ch *chaosRun) pick(ns []*tnode) *tnode {
	if len(ns) == 0 {
		return nil
	}
	return ns[ch.r.IntN(len(ns))]
}

func (ch *chaosRun) shuffled(ns []*tnode) []*tnode {
	out := slices.Clone(ns)
	ch.r.Shuffle(len(out), func(a, b int) { out[a], out[b] = out[b], out[a] })
	return out
}

func without(ns []*tnode, drop ...*tnode) []*tnode {
	return slices.DeleteFunc(slices.Clone(ns), func(n *tnode) bool { return slices.Contains(drop, n) })
}

type victimKind int

const (
	victimFollower victimKind = iota
	victimLeader
	victimJoiner
)

// joinFault starts a join and, at a seeded moment of it, kills (SIGKILL,
// then a restart) or pauses (SIGSTOP, then SIGCONT) a follower, the leader
// or the joiner.
func (ch *chaosRun) joinFault(name string, who victimKind, sig syscall.Signal) error {
	c := ch.c
	if err := ch.trim(); err != nil {
		return err
	}
	lead := c.leader()
	if lead == nil {
		return errors.New("no leader before the join")
	}
	inv, err := c.invite(ch.r)
	if err != nil {
		return err
	}
	j := c.newNode()
	victim := j
	switch who {
	case victimLeader:
		victim = lead
	case victimFollower:
		victim = ch.pick(without(c.liveMembers(), lead))
	}
	watch := ch.pick(without(c.liveMembers(), victim))
	if err := c.launchJoiner(j, inv); err != nil {
		return err
	}
	ch.fault("join")
	launched := time.Now()
	// The moment: early (around the invite), right after the invite is
	// consumed, or late (around the commit and the top-ups after it).
	var when string
	switch ch.r.IntN(3) {
	case 0:
		when = "early, " + ch.pause(0, 250*time.Millisecond).String()
	case 1:
		consumed := waitListed(c, watch, j, 10*time.Second)
		when = fmt.Sprintf("invite consumed (%v) +%v", consumed, ch.pause(0, 100*time.Millisecond))
	default:
		when = "late, " + ch.pause(250*time.Millisecond, 1500*time.Millisecond).String()
	}
	verb := map[syscall.Signal]string{syscall.SIGKILL: "kill -9", syscall.SIGSTOP: "SIGSTOP"}[sig]
	ch.logf("%s: node %d joins; %s of node %d at %s (%v after launch)", name, j.i, verb, victim.i, when, time.Since(launched).Round(time.Millisecond))
	var since time.Time
	if sig == syscall.SIGSTOP {
		if err := c.pause(victim.i); err != nil {
			return err
		}
		ch.fault("stop")
		ch.pause(time.Second, 4*time.Second)
		since = time.Now()
		if err := c.resume(victim.i); err != nil {
			return err
		}
	} else {
		if err := c.kill(victim.i); err != nil {
			return err
		}
		ch.fault("kill")
		ch.pause(0, 2*time.Second)
		since = time.Now()
		if err := c.start(victim.i); err != nil {
			return err
		}
		ch.fault("restart")
	}
	err = ch.await(name, since)
	ch.logf("%s: joiner node %d ended %s", name, j.i, j.role)
	return err
}

// waitListed polls watch's ledger (through its control socket, for speed)
// until it lists joiner j; it returns how long that took, or -1.
func waitListed(c *tnet, watch, j *tnode, timeout time.Duration) time.Duration {
	start := time.Now()
	cl := node.NewClient(watch.dir)
	for time.Since(start) < timeout {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cl.Status(ctx)
		cancel()
		if err == nil && slices.ContainsFunc(st.Members, func(m node.MemberInfo) bool { return m.PeerID == j.peer.String() }) {
			return time.Since(start).Round(time.Millisecond)
		}
		time.Sleep(2 * time.Millisecond) // a tight poll: the fault is meant to land right after
	}
	return -1
}

// trim removes a member, by vote, once joins have grown the testnet to
// chaosMaxNodes, so that two cores keep up.
func (ch *chaosRun) trim() error {
	c := ch.c
	if len(c.members()) < chaosMaxNodes {
		return nil
	}
	lead := c.leader()
	target := ch.pick(without(c.members(), lead))
	votes, err := c.remove(target, ch.shuffled(without(c.liveMembers(), target)))
	if err != nil {
		return err
	}
	ch.fault("remove")
	target.role = roleRemoved
	ch.logf("trim: node %d removed with %d votes", target.i, votes)
	if err := c.kill(target.i); err != nil {
		return err
	}
	return ch.await("removal", time.Now())
}

// coldRestart kills every member (SIGKILL, or SIGTERM for some), then starts
// them all again in a seeded order.
func (ch *chaosRun) coldRestart() error {
	c := ch.c
	ms := ch.shuffled(c.members())
	for _, m := range ms {
		sig := syscall.SIGKILL
		if ch.r.IntN(4) == 0 {
			sig = syscall.SIGTERM
		}
		if err := c.signal(m.i, sig); err != nil {
			return err
		}
		ch.faultSignal(sig)
	}
	ch.pause(0, time.Second)
	since := time.Now()
	for k, m := range ch.shuffled(ms) {
		if k > 0 {
			ch.pause(0, 300*time.Millisecond)
		}
		if err := c.launch(m.i); err != nil {
			return err
		}
		ch.fault("restart")
	}
	ch.logf("cold-restart: %d members killed and started", len(ms))
	return ch.await("cold-restart", since)
}

// rollingRestart restarts every member in turn, each after the cluster has
// recovered from the previous one.
func (ch *chaosRun) rollingRestart() error {
	c := ch.c
	for _, m := range ch.shuffled(c.members()) {
		sig := syscall.SIGKILL
		if ch.r.IntN(3) == 0 {
			sig = syscall.SIGTERM
		}
		if err := c.signal(m.i, sig); err != nil {
			return err
		}
		ch.faultSignal(sig)
		ch.pause(0, time.Second)
		since := time.Now()
		if err := c.start(m.i); err != nil {
			return err
		}
		ch.fault("restart")
		if err := ch.await("rolling-restart", since); err != nil {
			return err
		}
	}
	return nil
}

// holderDiskLoss kills a member, deletes its shares.db, starts it, and has
// another member run `p2pkey audit`, which must find the loss and repair it.
func (ch *chaosRun) holderDiskLoss() error {
	h := ch.pick(ch.c.members())
	return ch.loseDisk("holder-disk-loss", h)
}

// loseDisk is the disk loss of holder h, then an audit by another member.
func (ch *chaosRun) loseDisk(name string, h *tnode) error {
	c := ch.c
	if err := c.kill(h.i); err != nil {
		return err
	}
	ch.fault("kill")
	if err := os.Remove(filepath.Join(h.dir, "shares.db")); err != nil {
		return err
	}
	ch.fault("disk")
	ch.pause(0, time.Second)
	since := time.Now()
	if err := c.start(h.i); err != nil {
		return err
	}
	ch.fault("restart")
	// The holder must be back (unlocked from the others' shares) for the
	// audit to tell a lost envelope from an absent holder.
	if err := poll(*chaosBound, func() (bool, string) {
		st, err := c.status(h.i)
		return err == nil && st.Lock == node.LockUnlocked, unlockWhy(h, st, err)
	}); err != nil {
		return fmt.Errorf("node %d after losing its disk: %w", h.i, err)
	}
	// `p2pkey audit` is a custody audit: it checks the auditor's own
	// envelopes at their holders. An owner that re-pushed its envelope to h
	// since h restarted passes; the others find the loss. So the members
	// audit in a seeded order until one opens a repair (or all pass), once
	// the cluster is otherwise healthy: every auditor current and unlocked
	// (the escrow invariant aside, which the repair is to restore).
	if _, err := c.settle(*chaosBound, checkOpts{skipEscrow: true}); err != nil {
		return fmt.Errorf("before the audits after node %d lost its disk: %w", h.i, err)
	}
	var outcomes []string
	for _, auditor := range ch.shuffled(without(c.liveMembers(), h)) {
		result, repair, err := ch.audit(auditor, h)
		if err != nil {
			return err
		}
		outcomes = append(outcomes, fmt.Sprintf("node %d: holder %s", auditor.i, result))
		if repair != "" {
			outcomes = append(outcomes, fmt.Sprintf("repair %q", repair))
			break
		}
	}
	ch.logf("%s: node %d lost its disk; audits: %s", name, h.i, strings.Join(outcomes, "; "))
	return ch.await(name, since)
}

// audit runs `p2pkey audit` on auditor and returns what it says of holder
// h in the current generation ("not audited" if nothing) and the repair it
// opened, if any. A holder that is back but not yet reachable from the
// auditor is audited again, up to five times; a holder called corrupt is an
// error (nothing was tampered with).
func (ch *chaosRun) audit(auditor, h *tnode) (result, repair string, err error) {
	c := ch.c
	for try := 0; try < 5; try++ {
		out, errOut, code, err := c.cliSplit(auditor.i, 3*time.Minute, "audit", "--json")
		if err != nil {
			return "", "", err
		}
		var rep node.AuditReport
		if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
			return "", "", fmt.Errorf("audit on node %d: exit %d: %s%s", auditor.i, code, out, errOut)
		}
		result = "not audited"
		for _, g := range rep.Generations {
			for _, a := range g.Holders {
				if a.Result == node.AuditCorrupt {
					return "", "", fmt.Errorf("audit on node %d calls holder %s corrupt, but nothing was tampered with", auditor.i, short(a.PeerID))
				}
				if g.Current && a.PeerID == h.peer.String() {
					result = a.Result
				}
			}
		}
		if result != node.AuditUnreachable {
			return result, rep.Repair, nil
		}
		time.Sleep(time.Second) // the holder is back but not yet reachable from the auditor: audit again
	}
	return result, "", nil
}

// churn runs joins and removals by vote, with members killed in between.
func (ch *chaosRun) churn() error {
	c := ch.c
	rounds := 1
	if *chaosLong {
		rounds = 2
	}
	for range rounds {
		if err := ch.trim(); err != nil {
			return err
		}
		// A join, with a member killed while it runs.
		inv, err := c.invite(ch.r)
		if err != nil {
			return err
		}
		j := c.newNode()
		if err := c.launchJoiner(j, inv); err != nil {
			return err
		}
		ch.fault("join")
		ch.pause(0, 400*time.Millisecond)
		v := ch.pick(c.liveMembers())
		if err := c.kill(v.i); err != nil {
			return err
		}
		ch.fault("kill")
		ch.pause(0, time.Second)
		since := time.Now()
		if err := c.start(v.i); err != nil {
			return err
		}
		ch.fault("restart")
		ch.logf("churn: node %d joins, node %d killed and restarted", j.i, v.i)
		if err := ch.await("churn", since); err != nil {
			return err
		}
		// A removal by vote, with a member killed between the votes.
		lead := c.leader()
		target := ch.pick(without(c.members(), lead))
		voters := ch.shuffled(without(c.liveMembers(), target))
		votes, err := c.remove(target, voters[:1])
		if err != nil && votes == 0 {
			return err
		}
		k := ch.pick(without(c.liveMembers(), target))
		if err := c.kill(k.i); err != nil {
			return err
		}
		ch.fault("kill")
		ch.pause(0, time.Second)
		if err := c.start(k.i); err != nil {
			return err
		}
		ch.fault("restart")
		if err != nil { // not final after the first vote: the others vote
			more, err := c.remove(target, voters[1:])
			if err != nil {
				return err
			}
			votes += more
		}
		target.role = roleRemoved
		ch.fault("remove")
		// The removed node restarts: it must stay locked.
		if err := c.kill(target.i); err != nil {
			return err
		}
		ch.fault("kill")
		since = time.Now()
		if err := c.start(target.i); err != nil {
			return err
		}
		ch.fault("restart")
		ch.logf("churn: node %d removed with %d votes (node %d killed between votes), then restarted", target.i, votes, k.i)
		err = ch.await("churn", since)
		c.signal(target.i, syscall.SIGTERM) // it has shown it stays locked; spare the CPU
		if err != nil {
			return err
		}
	}
	return nil
}

// openGenerationRestart is issue 12's point 1 as a fault: a join's
// generation held open by its joiner, a member X killed (-9) and restarted
// while it is open, then the joiner back; then a holder of X's shares in
// that generation loses its disk, the loss is audited and repaired, and X
// restarts again.
//
// The seed picks how the joiner holds the generation open, once its invite
// is consumed:
//   - paused (SIGSTOP): every member's push to it hangs for the share
//     protocol's timeout, so the generation outlives X's restart, until it
//     is aborted as a stalled join or the joiner resumes;
//   - killed (-9), then started again to resume its join with the invite it
//     already used;
//   - slow: it runs in steps of 1 ms, 100 ms apart, answering and sharing
//     at a crawl, until the ledger shows X escrowed in the open generation;
//     it stays paused while X restarts, then resumes.
func (ch *chaosRun) openGenerationRestart() error {
	c := ch.c
	if err := ch.trim(); err != nil {
		return err
	}
	mode := []string{"paused", "killed", "slow"}[ch.r.IntN(3)]
	var (
		j, x, lead *tnode
		og         *node.GenerationInfo
		first      []*tnode
		err        error
	)
	if mode == "slow" {
		// X: the first member seen escrowed in the open generation.
		j, x, og, first, err = c.slowJoin(ch.r, 5, ch.logf)
		if err != nil {
			return err
		}
		defer c.resume(j.i)
		ch.fault("join")
		ch.fault("stop")
	} else {
		if lead = c.leader(); lead == nil {
			return errors.New("no leader")
		}
		if j, err = c.holdJoinRetry(ch.r, lead, 3, ch.logf); err != nil {
			return err
		}
		defer c.resume(j.i)
		ch.fault("join")
		ch.fault("stop")
		if mode == "killed" {
			if err := c.kill(j.i); err != nil {
				return err
			}
			ch.fault("kill")
		}
		if og, err = c.openGeneration(lead.i); err != nil {
			return err
		}
		x = ch.pick(c.liveMembers())
		if og != nil {
			if first, err = waitReceipts(c, lead, x, og.Number, *chaosBound); err != nil {
				return err
			}
		}
	}
	w := ch.pick(without(c.liveMembers(), x)) // whose ledger is read while X restarts
	openAtKill := "no generation open"
	if g, err := c.openGeneration(w.i); err == nil && g != nil {
		openAtKill = fmt.Sprintf("generation %d open", g.Number)
	}
	if err := c.kill(x.i); err != nil {
		return err
	}
	ch.fault("kill")
	ch.pause(0, 300*time.Millisecond)
	if err := c.start(x.i); err != nil {
		return err
	}
	ch.fault("restart")
	if err := poll(*chaosBound, func() (bool, string) {
		st, err := c.status(x.i)
		return err == nil && st.Lock == node.LockUnlocked, unlockWhy(x, st, err)
	}); err != nil {
		return fmt.Errorf("node %d restarted while generation %v was open: %w", x.i, genNumber(og), err)
	}
	regrown := "-"
	switch {
	case og != nil && mode == "slow":
		// X acts on the open generation while the joiner stays paused, up
		// to before the generation could be aborted as a stalled join.
		hold := min(2*time.Second, time.Until(resumeBy(og)))
		time.Sleep(hold) // the joiner's pause: part of the fault's schedule
		regrown = fmt.Sprintf("the joiner resumes %v later", hold.Round(time.Millisecond))
	case og != nil:
		// With the joiner paused, a second split's round would wait out
		// the push to it; with it dead, it ends at once.
		wait := 2 * time.Second
		if mode == "paused" {
			wait = 20 * time.Second
		}
		regrown = waitRegrown(c, w, x, og.Number, first, wait)
	}
	ch.logf("open-generation-restart: joiner node %d %s in generation %v; node %d killed with receipts from nodes %v (%s), restarted and unlocked; then: %s",
		j.i, mode, genNumber(og), x.i, indexes(first), openAtKill, regrown)
	since := time.Now()
	switch mode {
	case "killed":
		err = c.start(j.i)
		ch.fault("restart")
	default:
		err = c.resume(j.i)
	}
	if err != nil {
		return err
	}
	if err := ch.await("open-generation-restart", since); err != nil {
		return err
	}
	// A holder of X's shares in that generation loses its disk; once the
	// repair has re-shared, X restarts and must unlock from it.
	holders := slices.DeleteFunc(without(first, x, j), func(n *tnode) bool { return n.role != roleMember })
	if len(holders) == 0 {
		return nil
	}
	if err := ch.loseDisk("open-generation-holder-loss", ch.pick(holders)); err != nil {
		return err
	}
	if err := c.kill(x.i); err != nil {
		return err
	}
	ch.fault("kill")
	since = time.Now()
	if err := c.start(x.i); err != nil {
		return err
	}
	ch.fault("restart")
	return ch.await("open-generation-holder-loss", since)
}

// waitRegrown waits, after owner x restarted while generation gen was open,
// until x's row in lead's ledger names a holder beyond first (x shared into
// gen again after its restart), gen is no longer open, or timeout passes. It
// reports which, for the log: the point is to resume the paused joiner only
// once x has acted on the open generation, whatever it does there.
func waitRegrown(c *tnet, lead, x *tnode, gen uint64, first []*tnode, timeout time.Duration) string {
	outcome := fmt.Sprintf("nothing new within %v", timeout)
	poll(timeout, func() (bool, string) {
		gens, err := c.generations(lead.i)
		if err != nil {
			return false, err.Error()
		}
		for _, g := range gens {
			if g.Number != gen {
				continue
			}
			if g.State != "open" {
				outcome = "generation " + g.State
				return true, ""
			}
			row := slices.Index(g.Members, x.peer.String())
			if row < 0 || row >= len(g.Matrix) {
				return false, ""
			}
			for k, has := range g.Matrix[row] {
				if n := c.byPeer(g.Members[k]); has && n != nil && !slices.Contains(first, n) {
					outcome = fmt.Sprintf("new receipt from node %d", n.i)
					return true, ""
				}
			}
		}
		return false, ""
	})
	return outcome
}

// waitReceipts waits until lead's ledger shows owner x with at least a
// threshold of receipts in open generation gen, and returns the holders; it
// returns early, with none, if gen is no longer open.
func waitReceipts(c *tnet, lead, x *tnode, gen uint64, timeout time.Duration) ([]*tnode, error) {
	var holders []*tnode
	err := poll(timeout, func() (bool, string) {
		h, done, err := receiptsIn(c, lead, x, gen)
		if err != nil {
			return false, err.Error()
		}
		holders = h
		return done, fmt.Sprintf("node %d has %d receipts in generation %d", x.i, len(h), gen)
	})
	return holders, err
}

// slowJoin starts a joiner that holds a generation open with a member
// escrowed in it, as issue 12's point 1 needs: the joiner is paused as soon
// as its invite is consumed, then runs in steps of half a millisecond,
// 100 ms apart (a slow joiner), until the ledger shows a member X escrowed in
// the open generation. The steps race the members' pushes: if the
// generation commits first, the join is left to finish and another joiner
// tries, up to attempts. It returns the joiner (paused), X, the generation
// and X's holders.
//
// The joiner may not have recorded a receipt of its own yet: a generation
// whose joiner has recorded none is aborted as a stalled join
// (generations.JoinProgressTimeout, 10 s after it opened), so the caller
// resumes the joiner before that (see resumeBy).
func (c *tnet) slowJoin(r *rand.Rand, attempts int, logf func(string, ...any)) (j, x *tnode, og *node.GenerationInfo, holders []*tnode, err error) {
	for attempt := 1; attempt <= attempts; attempt++ {
		lead := c.leader()
		if lead == nil {
			return nil, nil, nil, nil, errors.New("no leader")
		}
		if j, err = c.holdJoinRetry(r, lead, 3, logf); err != nil {
			return nil, nil, nil, nil, err
		}
		if og, err = c.openGeneration(lead.i); err != nil {
			return nil, nil, nil, nil, err
		}
		if og == nil {
			return nil, nil, nil, nil, fmt.Errorf("joiner node %d's generation is not open once its invite was consumed and it was paused", j.i)
		}
		// Each attempt runs the joiner in shorter slices: on a loaded
		// machine (CI runs every package at once) a 500 µs sleep lasts
		// several milliseconds, and the joiner got through three joins in
		// a row too fast to be seen (seed 209051567).
		slice := max(500*time.Microsecond>>(attempt-1), 50*time.Microsecond)
		if err := c.step(j.i, slice, 100*time.Millisecond, 60*time.Second, func() (bool, error) {
			var done bool
			x, holders, done, err = firstEscrowed(c, lead, og.Number)
			return done, err
		}); err != nil {
			return nil, nil, nil, nil, err
		}
		if x != nil {
			return j, x, og, holders, nil
		}
		logf("slow join, attempt %d (slices of %v): generation %d closed before a member was seen escrowed in it", attempt, slice, og.Number)
		c.resume(j.i)
		if _, err := c.settle(90*time.Second, checkOpts{}); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	return nil, nil, nil, nil, fmt.Errorf("in %d joins, no member was seen escrowed in an open generation: the slow joiner went too fast", attempts)
}

// resumeBy is when the caller of slowJoin resumes the joiner at the latest:
// 8 s after its generation opened, before a stalled join may be aborted.
func resumeBy(og *node.GenerationInfo) time.Time { return og.OpenedAt.Add(8 * time.Second) }

// firstEscrowed returns a member (not a joiner) of open generation gen,
// in watch's ledger, with at least a threshold of receipts in it, and its
// holders; done is true once there is one, or once gen is no longer open
// (then with no member).
func firstEscrowed(c *tnet, watch *tnode, gen uint64) (x *tnode, holders []*tnode, done bool, err error) {
	gens, err := c.generations(watch.i)
	if err != nil {
		return nil, nil, false, err
	}
	for _, g := range gens {
		if g.Number != gen {
			continue
		}
		if g.State != "open" {
			return nil, nil, true, nil
		}
		for row, owner := range g.Members {
			o := c.byPeer(owner)
			if o == nil || o.role != roleMember || row >= len(g.Matrix) {
				continue
			}
			var hs []*tnode
			for k, has := range g.Matrix[row] {
				if n := c.byPeer(g.Members[k]); has && n != nil {
					hs = append(hs, n)
				}
			}
			if len(hs) >= g.Threshold {
				return o, hs, true, nil
			}
		}
		return nil, nil, false, nil
	}
	return nil, nil, false, fmt.Errorf("node %d knows no generation %d", watch.i, gen)
}

// receiptsIn returns the holders of owner x's receipts in generation gen in
// lead's ledger, and done: gen is open and they are a threshold, or gen is
// no longer open (then with no holders).
func receiptsIn(c *tnet, lead, x *tnode, gen uint64) ([]*tnode, bool, error) {
	gens, err := c.generations(lead.i)
	if err != nil {
		return nil, false, err
	}
	for _, g := range gens {
		if g.Number != gen {
			continue
		}
		if g.State != "open" {
			return nil, true, nil
		}
		row := slices.Index(g.Members, x.peer.String())
		if row < 0 || row >= len(g.Matrix) {
			return nil, false, nil
		}
		var holders []*tnode
		for k, has := range g.Matrix[row] {
			if n := c.byPeer(g.Members[k]); has && n != nil {
				holders = append(holders, n)
			}
		}
		return holders, len(holders) >= g.Threshold, nil
	}
	return nil, false, fmt.Errorf("node %d knows no generation %d", lead.i, gen)
}

// unlockWhy says why node n is not unlocked, from its status.
func unlockWhy(n *tnode, st node.Status, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("node %d is %s: %s", n.i, st.Lock, st.Unlock.Reason)
}

func genNumber(g *node.GenerationInfo) any {
	if g == nil {
		return "none"
	}
	return g.Number
}

func indexes(ns []*tnode) []int {
	out := make([]int, len(ns))
	for k, n := range ns {
		out[k] = n.i
	}
	return out
}

// chaosStats is the per-scenario record: recovery times, failures with
// their seeds and invariants, and the faults injected.
type chaosStats struct {
	seeds []uint64
	order []string
	rows  map[string]*chaosRow
	// failed counts the failed scenario runs (a scenario stops at its
	// first failure), for -chaos.maxfail.
	failed int
}

// tooMany reports whether -chaos.maxfail scenarios have failed.
func (s *chaosStats) tooMany() bool { return *chaosFails > 0 && s.failed >= *chaosFails }

// A chaosRow is one name's record. A scenario's own row counts its runs
// (started) and its faults; the recoveries of its steps that await under
// another name (removal, open-generation-holder-loss) have rows of their
// own.
type chaosRow struct {
	started    int
	recoveries []time.Duration
	failures   int
	// failedSeeds and invariants: which seeds failed, and on which
	// invariant (a verifier tag, or "step" for a scenario's own step).
	failedSeeds []uint64
	invariants  map[string]int
	faults      map[string]int
}

// faultKinds orders the fault counts of the table: joins started, kill -9,
// SIGTERM, SIGSTOP, restarts, lost disks, removals by vote.
var faultKinds = []string{"join", "kill", "term", "stop", "restart", "disk", "remove"}

func newChaosStats() *chaosStats { return &chaosStats{rows: map[string]*chaosRow{}} }

func (s *chaosStats) row(name string) *chaosRow {
	r := s.rows[name]
	if r == nil {
		r = &chaosRow{invariants: map[string]int{}, faults: map[string]int{}}
		s.rows[name] = r
		s.order = append(s.order, name)
	}
	return r
}

func (s *chaosStats) ok(name string, d time.Duration) {
	r := s.row(name)
	r.recoveries = append(r.recoveries, d)
}

func (s *chaosStats) fail(name string, seed uint64, invariant string) {
	r := s.row(name)
	r.failures++
	if !slices.Contains(r.failedSeeds, seed) {
		r.failedSeeds = append(r.failedSeeds, seed)
	}
	r.invariants[invariant]++
}

func (s *chaosStats) fault(name, kind string) { s.row(name).faults[kind]++ }

// faultSignal counts a kill -9 or a SIGTERM.
func (ch *chaosRun) faultSignal(sig syscall.Signal) {
	if sig == syscall.SIGTERM {
		ch.fault("term")
	} else {
		ch.fault("kill")
	}
}

// invariantOf names what err says failed: the verifier's invariant, or
// "step" (one of a scenario's own steps, such as an invite or an audit).
func invariantOf(err error) string {
	var ve *verifyError
	if errors.As(err, &ve) {
		if ve.safety {
			return "SAFETY " + ve.v.Invariant
		}
		return ve.v.Invariant
	}
	return "step"
}

// table renders the summary: per name, the scenario runs, the checks
// (recoveries awaited) and their failures, the median and max recovery
// time of the successful ones, the failed seeds and invariants, and the
// faults injected; then the totals and the seeds.
func (s *chaosStats) table() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tRUNS\tCHECKS\tFAILED\tMEDIAN RECOVERY\tMAX RECOVERY\tFAILED SEEDS\tFAILED INVARIANTS\tFAULTS")
	names := slices.Sorted(slices.Values(s.order))
	var all []time.Duration
	started, checks, fails := 0, 0, 0
	total := map[string]int{}
	for _, name := range names {
		r := s.rows[name]
		n := len(r.recoveries) + r.failures
		started, checks, fails = started+r.started, checks+n, fails+r.failures
		all = append(all, r.recoveries...)
		for k, v := range r.faults {
			total[k] += v
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", name, dash(r.started), n, r.failures,
			medianDur(r.recoveries), maxDur(r.recoveries), seedList(r.failedSeeds), countList(r.invariants, nil), countList(r.faults, faultKinds))
	}
	fmt.Fprintf(tw, "all\t%d\t%d\t%d\t%s\t%s\t\t\t%s\n", started, checks, fails, medianDur(all), maxDur(all), countList(total, faultKinds))
	tw.Flush()
	fmt.Fprintf(&b, "seeds run (%d): %s\n", len(s.seeds), seedList(s.seeds))
	return b.String()
}

func dash(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func seedList(seeds []uint64) string {
	if len(seeds) == 0 {
		return "-"
	}
	out := make([]string, len(seeds))
	for k, s := range seeds {
		out[k] = fmt.Sprint(s)
	}
	return strings.Join(out, ",")
}

// countList renders counts as "a×2 b×1", in order's order (or by name).
func countList(m map[string]int, order []string) string {
	keys := order
	if keys == nil {
		keys = slices.Sorted(maps.Keys(m))
	}
	var out []string
	for _, k := range keys {
		if m[k] > 0 {
			out = append(out, fmt.Sprintf("%s×%d", k, m[k]))
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, " ")
}

func medianDur(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Sorted(slices.Values(ds))
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return m.Round(10 * time.Millisecond).String()
}

func maxDur(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	return slices.Max(ds).Round(10 * time.Millisecond).String()
}
