package idle

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// daemon is one process the benchmark started and measures.
type daemon struct {
	name string
	dir  string
	cmd  *exec.Cmd
	// exited is closed when the process ends; err is then its exit error.
	exited chan struct{}
	err    error
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// start runs cmd in the background with its output in logPath.
func start(name, dir string, cmd *exec.Cmd, logPath string) (*daemon, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	cmd.Stderr = logf
	// Its own process group: a ^C to the benchmark is not sent to it, and
	// stop decides when it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	d := &daemon{name: name, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		logf.Close()
		close(d.exited)
	}()
	return d, nil
}

// stop sends SIGTERM and, after 10 s, SIGKILL.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("no loopback port not handed out before")
}

// portsGiven are the ports freePort has handed out: the kernel may offer a
// closed listener's port again at once, and two daemons (or a Raft
// configuration listing one address twice: "found duplicate address",
// bench run of 5, 15 and 25 nodes) must not get the same one.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// moduleRoot is the directory of the module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}

// build compiles the main package pkg (relative to the module root) to out,
// statically (CGO_ENABLED=0), as testnet/testnet does.
func build(pkg, out string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return nil
}

// p2pkeyCluster is a cluster of p2pkey daemons on loopback, TCP only.
type p2pkeyCluster struct {
	bin   string
	args  []string // extra daemon flags
	nodes []*daemon
	// joins is how long each node took from its daemon's start to being a
	// member (node 1: to bootstrapping); healthy is how long every node then
	// took to see all members and be unlocked.
	joins   []time.Duration
	healthy time.Duration
}

// cli runs the p2pkey CLI against the node in dir.
func (c *p2pkeyCluster) cli(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--data", dir}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("p2pkey --data %s %s: %w: %s", dir, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// startP2PKey forms an n-node cluster the way a user would: node 1
// bootstraps, and every other node joins with an invite node 1 issues, one
// after another. It returns once every node sees n voting members and is
// unlocked.
func startP2PKey(ctx context.Context, stops *[]func(), bin, root string, n int, args []string) (*p2pkeyCluster, error) {
	c := &p2pkeyCluster{bin: bin, args: args}
	*stops = append(*stops, c.stop)
	for i := 1; i <= n; i++ {
		dir := filepath.Join(root, fmt.Sprintf("p%d", i))
		port, err := freePort()
		if err != nil {
			return c, err
		}
		if _, err := c.cli(ctx, dir, "init", "--listen", fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)); err != nil {
			return c, err
		}
		flags := []string{"daemon", "--no-mdns"}
		if i == 1 {
			flags = append(flags, "--bootstrap")
		} else {
			invite, err := c.cli(ctx, c.nodes[0].dir, "invite", "--ttl", "10m")
			if err != nil {
				return c, err
			}
			path := filepath.Join(dir, "invite")
			if err := os.WriteFile(path, invite, 0o600); err != nil {
				return c, err
			}
			flags = append(flags, "--join-file", path)
		}
		started := time.Now()
		cmd := exec.Command(bin, append(append([]string{"--data", dir}, flags...), args...)...)
		d, err := start(fmt.Sprintf("p2pkey-%d", i), dir, cmd, filepath.Join(dir, "daemon.log"))
		if err != nil {
			return c, err
		}
		c.nodes = append(c.nodes, d)
		// wait returns once the node is a member; joins are serialised
		// because each opens a key generation.
		if err := c.waitSocket(ctx, d); err != nil {
			return c, err
		}
		if _, err := c.cli(ctx, dir, "wait", "--timeout", "2m"); err != nil {
			return c, fmt.Errorf("%w\n%s", err, tail(filepath.Join(dir, "daemon.log")))
		}
		c.joins = append(c.joins, time.Since(started))
	}
	settled := time.Now()
	defer func() { c.healthy = time.Since(settled) }()
	for _, d := range c.nodes {
		if _, err := c.cli(ctx, d.dir, "wait", "--members", fmt.Sprint(n), "--unlocked", "--timeout", "2m"); err != nil {
			return c, fmt.Errorf("%w\n%s", err, tail(filepath.Join(d.dir, "daemon.log")))
		}
	}
	return c, nil
}

// waitSocket waits until the daemon answers on its control socket.
func (c *p2pkeyCluster) waitSocket(ctx context.Context, d *daemon) error {
	for {
		if _, err := c.cli(ctx, d.dir, "status", "--json"); err == nil {
			return nil
		}
		if !d.alive() {
			return fmt.Errorf("%s exited: %v\n%s", d.name, d.err, tail(filepath.Join(d.dir, "daemon.log")))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not open its control socket: %w", d.name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// raftView is the part of `p2pkey status --json` the benchmark reads.
type raftView struct {
	PeerID string `json:"peer_id"`
	Raft   struct {
		State  string `json:"state"`
		Leader string `json:"leader"`
		Term   uint64 `json:"term"`
	} `json:"raft"`
}

// roles asks every daemon for its Raft state. It returns the leader's index
// and the term, or an error unless exactly one node leads and every node
// agrees on it and on the term.
func (c *p2pkeyCluster) roles(ctx context.Context) (int, uint64, error) {
	leader, term := -1, uint64(0)
	var leaderID string
	views := make([]raftView, len(c.nodes))
	for i, d := range c.nodes {
		out, err := c.cli(ctx, d.dir, "status", "--json")
		if err != nil {
			return -1, 0, err
		}
		if err := json.Unmarshal(out, &views[i]); err != nil {
			return -1, 0, fmt.Errorf("%s status: %w", d.name, err)
		}
		if views[i].Raft.State == "leader" {
			if leader >= 0 {
				return -1, 0, fmt.Errorf("two leaders: %s and %s", c.nodes[leader].name, d.name)
			}
			leader, leaderID, term = i, views[i].PeerID, views[i].Raft.Term
		}
	}
	if leader < 0 {
		return -1, 0, errors.New("no node is the leader")
	}
	for i, v := range views {
		if v.Raft.Leader != leaderID || v.Raft.Term != term {
			return -1, 0, fmt.Errorf("%s follows %q in term %d; %s leads in term %d", c.nodes[i].name, v.Raft.Leader, v.Raft.Term, c.nodes[leader].name, term)
		}
	}
	return leader, term, nil
}

// stableRoles is roles, waiting up to 30 s for an election in progress to
// end.
func (c *p2pkeyCluster) stableRoles(ctx context.Context) (int, uint64, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, term, err := c.roles(ctx)
		if err == nil || time.Now().After(deadline) {
			return leader, term, err
		}
		select {
		case <-ctx.Done():
			return -1, 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *p2pkeyCluster) stop() {
	var wg sync.WaitGroup
	for _, d := range c.nodes {
		wg.Go(d.stop)
	}
	wg.Wait()
}

// raftCluster is the baseline: rafttcp processes, one per server.
type raftCluster struct {
	nodes []*daemon
	mu    sync.Mutex
	// state and leader are the latest lines each process printed; changes
	// counts state and leader changes after the cluster formed.
	state, leader []string
	changes       int
	formed        bool
	changed       chan struct{}
}

// startRaft starts n rafttcp servers and returns once all of them name the
// same leader.
func startRaft(ctx context.Context, stops *[]func(), bin, root string, n int) (*raftCluster, error) {
	c := &raftCluster{state: make([]string, n), leader: make([]string, n), changed: make(chan struct{}, 1)}
	*stops = append(*stops, c.stop)
	var peers []string
	for i := 1; i <= n; i++ {
		port, err := freePort()
		if err != nil {
			return c, err
		}
		peers = append(peers, fmt.Sprintf("r%d=127.0.0.1:%d", i, port))
	}
	for i := 1; i <= n; i++ {
		dir := filepath.Join(root, fmt.Sprintf("r%d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return c, err
		}
		cmd := exec.Command(bin, "-id", fmt.Sprintf("r%d", i), "-peers", strings.Join(peers, ","))
		out, w, err := os.Pipe()
		if err != nil {
			return c, err
		}
		cmd.Stdout = w
		d, err := start(fmt.Sprintf("raft-%d", i), dir, cmd, filepath.Join(dir, "rafttcp.log"))
		w.Close()
		if err != nil {
			out.Close()
			return c, err
		}
		c.nodes = append(c.nodes, d)
		go c.read(i-1, out)
	}
	for {
		if l, ok := c.agreed(); ok && l >= 0 {
			c.mu.Lock()
			c.formed = true
			c.mu.Unlock()
			return c, nil
		}
		for _, d := range c.nodes {
			if !d.alive() {
				return c, fmt.Errorf("rafttcp %s exited before the cluster agreed on a leader (see its rafttcp.log)", d.name)
			}
		}
		select {
		case <-ctx.Done():
			return c, fmt.Errorf("the rafttcp cluster did not agree on a leader: %w", ctx.Err())
		case <-c.changed:
		case <-time.After(time.Second): // a process that exits says nothing on c.changed
		}
	}
}

// read follows one process's state lines.
func (c *raftCluster) read(i int, out *os.File) {
	defer out.Close()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		kind, v, _ := strings.Cut(sc.Text(), " ")
		c.mu.Lock()
		switch kind {
		case "state":
			c.state[i] = v
		case "leader":
			c.leader[i] = v
		}
		if c.formed {
			c.changes++
		}
		c.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}

// agreed returns the leader's index if exactly one process leads and every
// process names it.
func (c *raftCluster) agreed() (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	leader := -1
	for i, s := range c.state {
		if s == "Leader" {
			if leader >= 0 {
				return -1, false
			}
			leader = i
		}
	}
	if leader < 0 {
		return -1, false
	}
	id := fmt.Sprintf("r%d", leader+1)
	for _, l := range c.leader {
		if l != id {
			return -1, false
		}
	}
	return leader, true
}

// churn is how many state or leader changes the processes reported after
// the cluster formed.
func (c *raftCluster) churn() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changes
}

func (c *raftCluster) stop() {
	var wg sync.WaitGroup
	for _, d := range c.nodes {
		wg.Go(d.stop)
	}
	wg.Wait()
}

// tail returns the last lines of a log file, for an error message.
func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
