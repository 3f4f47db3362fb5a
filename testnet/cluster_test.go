package testnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/p2p"
)

// This file is the process-level harness of the fault tests: the testnet
// script builds the binary and brings the first nodes up; tnet then starts,
// signals and queries the daemons itself (the same way the script does, with
// the same data layout, pid files and logs, so `testnet/testnet status`,
// `kill`, `down` and `clean` keep working), because a fault must land at a
// chosen millisecond, not after a shell has started.

// chaosPurpose is the purpose of the derived key the fault tests compare.
const chaosPurpose = "chaos"

// nodeRole is what the test knows about a node.
type nodeRole int

const (
	// roleMember: an admitted member; it must be up, unlocked and escrowed
	// whenever the cluster is checked.
	roleMember nodeRole = iota
	// roleJoining: launched with an invite and not yet admitted; a check
	// settles it into roleMember or roleGone.
	roleJoining
	// roleRemoved: removed by vote; it must stay locked.
	roleRemoved
	// roleGone: a joiner that was not admitted; its daemon is stopped.
	roleGone
)

func (r nodeRole) String() string {
	return [...]string{"member", "joining", "removed", "gone"}[r]
}

// tnode is one node of the testnet.
type tnode struct {
	i      int
	dir    string
	peer   peer.ID
	role   nodeRole
	key    string // hex of `key --purpose chaos`, once seen unlocked
	invite string // a joiner's invite, for a restart before it has Raft state
	priv   crypto.PrivKey
}

// tnet is a testnet driven at the process level.
type tnet struct {
	t     testing.TB
	s     *script
	bin   string
	nodes map[int]*tnode
}

// newTnet brings up a testnet of n nodes with the script, on a free port
// range, and records every node's derived key.
func newTnet(t testing.TB, n int) *tnet {
	t.Helper()
	c := &tnet{t: t, s: newScript(t, freePortBase(t)), nodes: map[int]*tnode{}}
	c.bin = c.s.bin
	t.Cleanup(func() {
		// Before the script's clean (cleanups run last first): keep the
		// logs of a failed test, and let no daemon stay paused.
		c.resumeAll()
		if t.Failed() && !c.s.closed {
			t.Logf("daemon logs kept in %s", c.keepLogs(strings.ReplaceAll(t.Name(), "/", "-")))
		}
	})
	c.s.must("up", "-n", strconv.Itoa(n))
	for i := 1; i <= n; i++ {
		c.register(i, roleMember)
	}
	return c
}

// freePortBase picks a TESTNET_PORT whose next 60 ports are free on
// loopback (TCP and UDP), so that these tests never collide with another
// testnet on the same machine. The range lies below the kernel's ephemeral
// ports: a daemon's outgoing connection takes a local port from those, and
// one that took a killed node's port would keep it from listening again
// when it restarts ("address already in use").
func freePortBase(t testing.TB) int {
	t.Helper()
	lo, hi := 10000, ephemeralLow()-100
	for range 50 {
		base := lo + 100*rand.IntN((hi-lo)/100)
		if portsFree(base+1, base+60) {
			return base
		}
	}
	t.Fatal("no free range of 60 loopback ports")
	return 0
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// if it cannot be read), never below 20000.
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo < 20000 {
		return 32768
	}
	return lo
}

func portsFree(from, to int) bool {
	for p := from; p <= to; p++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		u.Close()
	}
	return true
}

func (c *tnet) dir(i int) string { return filepath.Join(c.s.dir, fmt.Sprintf("node%d", i)) }

// register records node i, whose data directory exists, with its peer ID.
func (c *tnet) register(i int, role nodeRole) *tnode {
	c.t.Helper()
	priv, err := p2p.LoadIdentity(filepath.Join(c.dir(i), "identity.key"))
	if err != nil {
		c.t.Fatalf("node %d: %v", i, err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		c.t.Fatal(err)
	}
	n := &tnode{i: i, dir: c.dir(i), peer: id, role: role, priv: priv}
	c.nodes[i] = n
	return n
}

// byRole lists the nodes with one of the roles, by index.
func (c *tnet) byRole(roles ...nodeRole) []*tnode {
	var out []*tnode
	for _, n := range c.nodes {
		if slices.Contains(roles, n.role) {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *tnode) int { return a.i - b.i })
	return out
}

func (c *tnet) members() []*tnode { return c.byRole(roleMember) }

func (c *tnet) byPeer(id string) *tnode {
	for _, n := range c.nodes {
		if n.peer.String() == id {
			return n
		}
	}
	return nil
}

// newNode initialises the next node's data directory (not started).
func (c *tnet) newNode() *tnode {
	c.t.Helper()
	i := 1
	for c.nodes[i] != nil {
		i++
	}
	port := c.s.port + i
	out, code, err := c.cli(i, 30*time.Second, "init",
		"--listen", fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port),
		"--listen", fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", port))
	if err != nil || code != 0 {
		c.t.Fatalf("init node %d: exit %d, %v: %s", i, code, err, out)
	}
	return c.register(i, roleGone)
}

// cli runs the binary against node i and returns its stdout (its stderr
// too when it fails) and exit code; err is set only if it could not run or
// overran timeout.
func (c *tnet) cli(i int, timeout time.Duration, args ...string) (string, int, error) {
	out, errOut, code, err := c.cliSplit(i, timeout, args...)
	if code != 0 {
		out += errOut
	}
	return out, code, err
}

// cliSplit is cli with stdout and stderr apart.
func (c *tnet) cliSplit(i int, timeout time.Duration, args ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--data", c.dir(i)}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		return out.String(), errb.String(), -1, fmt.Errorf("p2pkey %s on node %d: no answer within %v", args[0], i, timeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return "", "", -1, err
	}
	return out.String(), errb.String(), 0, nil
}

// jsonCLI runs a --json command on node i and decodes its output into v.
func (c *tnet) jsonCLI(i int, v any, args ...string) error {
	out, code, err := c.cli(i, 15*time.Second, append(args, "--json")...)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("p2pkey %s on node %d: exit %d: %s", args[0], i, code, strings.TrimSpace(out))
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("p2pkey %s --json on node %d: %v", args[0], i, err)
	}
	return nil
}

func (c *tnet) status(i int) (node.Status, error) {
	var st node.Status
	return st, c.jsonCLI(i, &st, "status")
}

// generations reads node i's generations, with the holder matrices, from
// its control socket (the CLI's --json is a presentation of the same).
func (c *tnet) generations(i int) ([]node.GenerationInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	gens, err := node.NewClient(c.dir(i)).Generations(ctx)
	if err != nil {
		return nil, fmt.Errorf("generations of node %d: %w", i, err)
	}
	return gens, nil
}

// key runs `key --purpose chaos --format hex` on node i: the key and exit 0
// when unlocked, exit 3 when locked.
func (c *tnet) key(i int) (string, int, error) {
	out, code, err := c.cli(i, 15*time.Second, "key", "--purpose", chaosPurpose, "--format", "hex")
	if code == 0 {
		out = strings.TrimSpace(out)
	}
	return out, code, err
}

// invite asks a live member for an invite, trying them in a random order.
func (c *tnet) invite(r *rand.Rand) (string, error) {
	ms := c.liveMembers()
	r.Shuffle(len(ms), func(a, b int) { ms[a], ms[b] = ms[b], ms[a] })
	var errs []string
	for _, m := range ms {
		out, code, err := c.cli(m.i, 45*time.Second, "invite", "--ttl", "10m")
		if err == nil && code == 0 {
			return strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]), nil
		}
		errs = append(errs, fmt.Sprintf("node %d: exit %d %v %s", m.i, code, err, strings.TrimSpace(out)))
	}
	return "", fmt.Errorf("no member issued an invite: %s", strings.Join(errs, "; "))
}

func (c *tnet) liveMembers() []*tnode {
	var out []*tnode
	for _, m := range c.members() {
		if c.alive(m.i) {
			out = append(out, m)
		}
	}
	return out
}

// remove votes from members, in order, to remove target until the removal
// is final (status "removed" in the voter's ledger). It returns the number of
// votes cast.
func (c *tnet) remove(target *tnode, voters []*tnode) (int, error) {
	votes := 0
	var last string
	for _, v := range voters {
		if v == target || !c.alive(v.i) {
			continue
		}
		out, code, err := c.cli(v.i, 90*time.Second, "remove", "--yes", target.peer.String())
		if err != nil || code != 0 {
			last = fmt.Sprintf("vote by node %d: exit %d, %v: %s", v.i, code, err, strings.TrimSpace(out))
			continue
		}
		votes++
		st, err := c.status(v.i)
		if err != nil {
			continue
		}
		for _, m := range st.Members {
			if m.PeerID == target.peer.String() && m.Status == "removed" {
				return votes, nil
			}
		}
	}
	return votes, fmt.Errorf("node %d is not removed after %d votes (%s)", target.i, votes, last)
}

// pid returns node i's daemon pid from its pid file, or 0.
func (c *tnet) pid(i int) int {
	data, err := os.ReadFile(filepath.Join(c.dir(i), "daemon.pid"))
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return p
}

// procState is the state letter of /proc/PID/stat ("" if there is no such
// process).
func procState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	end := bytes.LastIndexByte(data, ')')
	if end < 0 || end+3 > len(data) {
		return ""
	}
	return string(data[end+2 : end+3])
}

// alive reports whether node i's daemon runs (a zombie does not).
func (c *tnet) alive(i int) bool {
	p := c.pid(i)
	if p <= 0 {
		return false
	}
	switch procState(p) {
	case "", "Z", "X":
		return false
	}
	return true
}

// launch starts node i's daemon in the background exactly as the script's
// launch does: its own session, logs appended to daemon.log, a pid file.
func (c *tnet) launch(i int, args ...string) error {
	if c.alive(i) {
		return fmt.Errorf("node %d is already running", i)
	}
	d := c.dir(i)
	os.Remove(filepath.Join(d, "p2pkey.sock"))
	logf, err := os.OpenFile(filepath.Join(d, "daemon.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprint(logf, logLine("info", "testnet/cluster_test.go", "launch", "node", i, "args", strings.Join(args, " ")))
	cmd := exec.Command(c.bin, append(append([]string{"--data", d, "daemon"}, args...), "--no-mdns")...)
	cmd.Env = os.Environ() // the daemon's default levels, as the script's launch
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait() // reap it when it exits
	return os.WriteFile(filepath.Join(d, "daemon.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
}

// launchJoiner starts joiner j with invite inv, which it reads from a file
// in its data directory (an invite on the command line would show in ps).
// The file stays, so that a restart before j has Raft state presents the
// invite again.
func (c *tnet) launchJoiner(j *tnode, inv string) error {
	j.invite, j.role = inv, roleJoining
	if err := os.WriteFile(c.inviteFile(j.i), []byte(inv+"\n"), 0o600); err != nil {
		return err
	}
	return c.launch(j.i, "--join-file", c.inviteFile(j.i))
}

// isMemberDir reports whether data directory dir belongs to a cluster, as
// the daemon decides whether --join is an error there: a cluster file, and
// no join in progress (joining.invite).
func isMemberDir(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "joining.invite")); err == nil {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, "cluster.json"))
	return err == nil
}

func (c *tnet) inviteFile(i int) string { return filepath.Join(c.dir(i), "invite") }

// start launches node i again and waits until its control socket answers.
// A joiner that is not yet a member (no cluster file, or a join still in
// progress in its data directory) is started with its invite again, as an
// operator would re-run the same command; a member without it (the daemon
// refuses --join on a member).
func (c *tnet) start(i int) error {
	var args []string
	if n := c.nodes[i]; n != nil && n.invite != "" && !isMemberDir(c.dir(i)) {
		args = []string{"--join-file", c.inviteFile(i)}
	}
	if err := c.launch(i, args...); err != nil {
		return err
	}
	return c.waitSocket(i, 30*time.Second)
}

// waitSocket waits until node i's control socket answers, or its daemon
// exits.
func (c *tnet) waitSocket(i int, timeout time.Duration) error {
	return poll(timeout, func() (bool, string) {
		if !c.alive(i) {
			return true, ""
		}
		_, err := c.status(i)
		return err == nil, fmt.Sprint(err)
	})
}

// signal sends sig to node i's daemon. SIGKILL and SIGTERM wait until it has
// exited and remove its pid file; SIGSTOP waits until it is stopped.
func (c *tnet) signal(i int, sig syscall.Signal) error {
	p := c.pid(i)
	if p <= 0 || !c.alive(i) {
		return nil
	}
	if err := syscall.Kill(p, sig); err != nil {
		return fmt.Errorf("signal %v to node %d: %w", sig, i, err)
	}
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM:
		syscall.Kill(p, syscall.SIGCONT) // a paused daemon must run to exit
		err := poll(20*time.Second, func() (bool, string) { return !c.alive(i), "still running" })
		if err != nil && sig == syscall.SIGTERM {
			syscall.Kill(p, syscall.SIGKILL)
			err = poll(10*time.Second, func() (bool, string) { return !c.alive(i), "still running" })
		}
		if err != nil {
			return fmt.Errorf("node %d did not exit on %v: %w", i, sig, err)
		}
		os.Remove(filepath.Join(c.dir(i), "daemon.pid"))
	case syscall.SIGSTOP:
		// A tight wait: the slices of a throttled node must stay short.
		for deadline := time.Now().Add(5 * time.Second); ; {
			switch procState(p) {
			case "T", "t", "", "Z":
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node %d did not stop on SIGSTOP", i)
			}
			time.Sleep(100 * time.Microsecond) // polling /proc for the stop: no event says a process is stopped
		}
	}
	return nil
}

func (c *tnet) kill(i int) error   { return c.signal(i, syscall.SIGKILL) }
func (c *tnet) pause(i int) error  { return c.signal(i, syscall.SIGSTOP) }
func (c *tnet) resume(i int) error { return c.signal(i, syscall.SIGCONT) }

// resumeAll sends SIGCONT to every daemon, so that none stays paused.
func (c *tnet) resumeAll() {
	for i := range c.nodes {
		c.resume(i)
	}
}

// leader returns the member that the live members agree leads, or nil.
func (c *tnet) leader() *tnode {
	for _, m := range c.liveMembers() {
		st, err := c.status(m.i)
		if err == nil && st.Raft.Leader != "" {
			return c.byPeer(st.Raft.Leader)
		}
	}
	return nil
}

// holdJoin starts joiner j with invite inv and lets it run in slices of a
// few milliseconds, paused in between (a joiner that gets little CPU), until
// watch's ledger lists it as a joiner of an open generation: its invite is
// consumed, and it has not yet shared. It leaves j paused (SIGSTOP) there.
// It returns an error if j's generation committed or aborted first.
func (c *tnet) holdJoin(j *tnode, inv string, watch *tnode) error {
	cl := node.NewClient(watch.dir)
	// reached reports whether j is held, or why it never will be.
	reached := func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gens, err := cl.Generations(ctx)
		if err != nil {
			return false, fmt.Errorf("node %d: generations: %v", watch.i, err)
		}
		for _, g := range gens {
			if !slices.Contains(g.Joiners, j.peer.String()) {
				continue
			}
			if g.State != "open" {
				return false, fmt.Errorf("%w: joiner node %d's generation %d %s first", errNotHeld, j.i, g.Number, g.State)
			}
			return true, nil
		}
		return false, nil
	}
	if err := c.launchJoiner(j, inv); err != nil {
		return err
	}
	p := c.pid(j.i)
	syscall.Kill(p, syscall.SIGSTOP)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if !c.alive(j.i) {
			return fmt.Errorf("joiner node %d exited while held", j.i)
		}
		syscall.Kill(p, syscall.SIGCONT)
		time.Sleep(time.Millisecond) // the slice: part of the fault, not a wait for a condition
		if err := c.pause(j.i); err != nil {
			return err
		}
		ok, err := reached()
		if err != nil || ok {
			return err
		}
	}
	return fmt.Errorf("joiner node %d was not listed as a joiner within 60s", j.i)
}

// step runs paused node i in slices of on, each followed by a pause of
// off in which the rest of the cluster reacts, until done reports true (it
// is called between slices, with i paused) or timeout passes. It leaves i
// paused: a node that gets a sliver of the CPU, slow at everything but
// alive, observed between its steps.
func (c *tnet) step(i int, on, off, timeout time.Duration, done func() (bool, error)) error {
	p := c.pid(i)
	deadline := time.Now().Add(timeout)
	for {
		if ok, err := done(); ok || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %d: not done within %v of steps", i, timeout)
		}
		syscall.Kill(p, syscall.SIGCONT)
		time.Sleep(on) // the slice: the fault itself
		if err := c.pause(i); err != nil {
			return err
		}
		time.Sleep(off) // the others' turn
	}
}

// errNotHeld: holdJoin could not pause the joiner before its generation
// committed (or aborted). Its slices race the cluster, so a caller may try
// again with another joiner.
var errNotHeld = errors.New("joiner not held")

// holdJoinRetry is holdJoin with a new joiner (and a new invite) after
// each errNotHeld, up to attempts; the joiners that got through are left to
// the next check to settle.
func (c *tnet) holdJoinRetry(r *rand.Rand, watch *tnode, attempts int, logf func(string, ...any)) (*tnode, error) {
	for attempt := 1; ; attempt++ {
		inv, err := c.invite(r)
		if err != nil {
			return nil, err
		}
		j := c.newNode()
		err = c.holdJoin(j, inv, watch)
		if !errors.Is(err, errNotHeld) || attempt == attempts {
			return j, err
		}
		logf("hold, attempt %d: %v; again", attempt, err)
		if _, err := c.settle(90*time.Second, checkOpts{}); err != nil {
			return nil, err
		}
	}
}

// openGeneration returns the open generation in node i's ledger, if any.
func (c *tnet) openGeneration(i int) (*node.GenerationInfo, error) {
	gens, err := c.generations(i)
	if err != nil {
		return nil, err
	}
	for k := range gens {
		if gens[k].State == "open" {
			return &gens[k], nil
		}
	}
	return nil, nil
}

// poll calls f until it reports done or timeout passes; the error carries
// f's last explanation.
func poll(timeout time.Duration, f func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, why := f()
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %s", timeout, why)
		}
		time.Sleep(50 * time.Millisecond) // pacing between polls of an observable condition
	}
}

// keepLogs copies every node's daemon log into a directory that outlives
// the test, and returns it.
func (c *tnet) keepLogs(tag string) string {
	dst, err := os.MkdirTemp("", "p2pkey-chaos-"+tag+"-")
	if err != nil {
		return ""
	}
	for i := range c.nodes {
		data, err := os.ReadFile(filepath.Join(c.dir(i), "daemon.log"))
		if err == nil {
			os.WriteFile(filepath.Join(dst, fmt.Sprintf("node%d.log", i)), data, 0o600)
		}
	}
	return dst
}

// logTails returns the last lines of every node's daemon log.
func (c *tnet) logTails(bytesPerNode int) string {
	var b strings.Builder
	idx := make([]int, 0, len(c.nodes))
	for i := range c.nodes {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	for _, i := range idx {
		data, _ := os.ReadFile(filepath.Join(c.dir(i), "daemon.log"))
		if len(data) > bytesPerNode {
			data = data[len(data)-bytesPerNode:]
		}
		fmt.Fprintf(&b, "---- node %d (%s, %s) log tail\n%s\n", i, c.nodes[i].role, c.nodes[i].peer, data)
	}
	return b.String()
}
