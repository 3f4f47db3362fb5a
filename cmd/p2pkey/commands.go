package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/opsweb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/spf13/cobra"
)

func newInitCmd(g *globals) *cobra.Command {
	var listen, announce, relays []string
	port := defaultPort()
	cmd := &cobra.Command{
		Use:   "init [--listen MULTIADDR]... [--relay MULTIADDR]...",
		Short: "Create this node's identity and configuration",
		Long: `init creates the data directory (mode 0700), a new Ed25519 libp2p identity
(identity.key, mode 0600) and config.json with the listen addresses, and prints
the node's peer ID. It refuses to overwrite an existing identity, and refuses a
listen address no transport can use (a UDP address needs /quic-v1), naming it.

The default listen addresses are
  ` + strings.Join(p2p.DefaultListenAddrs, "\n  ") + `

` + configHelp,
		Example: `  p2pkey init
  p2pkey --data /var/lib/p2pkey init --listen /ip4/0.0.0.0/tcp/` + port + ` --listen /ip4/0.0.0.0/udp/` + port + `/quic-v1`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(listen) == 0 {
				listen = p2p.DefaultListenAddrs
			}
			for _, a := range listen {
				if err := checkListenAddr(a); err != nil {
					return &statusError{code: exitUsage, err: fmt.Errorf("--listen %w", err)}
				}
			}
			for _, a := range announce {
				if err := checkListenAddr(a); err != nil {
					return &statusError{code: exitUsage, err: fmt.Errorf("--announce %w", err)}
				}
			}
			cfg := node.DefaultConfig(g.dataDir)
			cfg.ListenAddrs, cfg.AnnounceAddrs, cfg.Relays = listen, announce, relays
			if err := cfg.Validate(); err != nil {
				return &statusError{code: exitUsage, err: err}
			}
			if _, err := os.Stat(configPath(g.dataDir)); err == nil {
				return fmt.Errorf("%s is already initialised (refusing to overwrite)", g.dataDir)
			}
			if err := secureDataDir(cmd, g.dataDir); err != nil {
				return err
			}
			id, err := node.Init(g.dataDir)
			if err != nil {
				return err
			}
			data, _ := json.MarshalIndent(fileConfig{Version: 1, Listen: listen, Announce: announce, Relays: relays}, "", "  ")
			if err := os.WriteFile(configPath(g.dataDir), append(data, '\n'), 0o600); err != nil {
				return err
			}
			if g.jsonOut {
				return printJSON(cmd.OutOrStdout(), map[string]string{"peer_id": id.String(), "data": g.dataDir})
			}
			fmt.Fprintln(cmd.OutOrStdout(), id)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&listen, "listen", nil, "multiaddr to listen on (repeatable; default "+strings.Join(p2p.DefaultListenAddrs, ", ")+")")
	cmd.Flags().StringArrayVar(&announce, "announce", nil, "multiaddr to advertise instead of the listen addresses (repeatable)")
	cmd.Flags().StringArrayVar(&relays, "relay", nil, "multiaddr (with /p2p/ID) of a member that relays for this node behind NAT (repeatable)")
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}

// defaultPort is the port of p2p.DefaultListenAddrs, for examples.
func defaultPort() string {
	for _, a := range p2p.DefaultListenAddrs {
		parts := strings.Split(a, "/")
		for i, p := range parts {
			if (p == "tcp" || p == "udp") && i+1 < len(parts) {
				return parts[i+1]
			}
		}
	}
	return "PORT"
}

// daemonLog carries the daemon's own lines (running, shutting down), so that
// they follow GOLOG_LOG_FMT like every other line.
var daemonLog = logging.Logger("p2pkey/daemon")

func newDaemonCmd(g *globals) *cobra.Command {
	var bootstrap bool
	var join, joinFile string
	var heartbeat time.Duration
	var keepStartupPages bool
	var startupPagesAfter time.Duration
	var relays []string
	var natPortMap, noMDNS, noRelayService bool
	var reachability string
	var maxBehind uint32
	var lapseGrace time.Duration
	var metricsAddr string
	var ks keySocketFlags
	cmd := &cobra.Command{
		Use:   "daemon [--bootstrap | --join-file FILE | --join -]",
		Short: "Run the node in the foreground",
		Long: `daemon runs the node until it receives SIGINT or SIGTERM.

The first time, pass --bootstrap to create a new cluster, or an invite from a
member to join one: --join-file FILE reads it from a file, --join - from stdin
(one line). --join INVITE still works, but the invite is then visible to every
local user in the process list (ps) for as long as the daemon runs, so it
prints a warning. After that, restart with none of them: the node resumes from
the Raft state in its data directory.

The data directory must belong to the user the daemon runs as. If group or
others can reach it, or its identity.key, the daemon tightens them to 0700 and
0600 and says so.

Behind NAT, the node punches holes (DCUtR) where it can and otherwise uses a
member that relays for it: one named by --relay, in config.json, or in the
invite. A publicly reachable member relays for other members, never for
strangers. On a LAN, members find each other with mDNS.

Under systemd (Type=notify, see contrib/systemd/p2pkey.service) the daemon
sends READY=1 only once its key is unlocked, so that units ordered after it get
their keys on the first try; STATUS= lines while it waits ("locked: 1 of 2
shares for generation 4, waiting on 12D3KooW…"); WATCHDOG=1 when WatchdogSec=
is set; and STOPPING=1 when it stops.

--luks-socket PATH serves systemd-cryptsetup's key-file socket: name PATH as the
key file in /etc/crypttab, and the volume VOLUME gets the key of purpose
luks/VOLUME (what 'p2pkey key --purpose luks/VOLUME --format raw' prints). Only
root, and the uids given with --luks-allow-uid, get a key; a request waits up
to --luks-wait for the node to unlock, then gets nothing.

--app-socket PATH serves keys to other local users: they may ask for keys
(key, encrypt, decrypt: 'p2pkey --socket PATH key ...') and nothing else, and
only for the purposes an --app-allow rule grants their uid or group:
  uid:1000=app/*   user:www-data=web/*,cache   gid:990=*   group:apps=apps/*
(a pattern ending in * is a prefix). --app-group makes the socket file 0660
and owned by that group; otherwise it is 0666 and the rules alone decide.

All of these can also be set in DATA/config.json: luks_socket,
luks_allow_uids, luks_wait, app_socket, app_group, app_allow.

--bootstrap and --join are for the first start only: on a node that already
belongs to a cluster they are an error (exit 2), never silently ignored.

` + configHelp + `

Logs go to stderr. Set GOLOG_LOG_LEVEL to change the level, for example
GOLOG_LOG_LEVEL="info,p2pkey/consensus=debug"; GOLOG_LOG_FMT=json gives JSON.`,
		Example: `  p2pkey daemon --bootstrap
  p2pkey daemon --join-file invite.txt
  p2pkey daemon --metrics 127.0.0.1:9476
  ssh member p2pkey invite | p2pkey daemon --join -
  p2pkey daemon --relay /ip4/203.0.113.7/udp/` + defaultPort() + `/quic-v1/p2p/12D3KooW...
  p2pkey daemon`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			token, err := readInvite(cmd, bootstrap, join, joinFile)
			if err != nil {
				return err
			}
			fc, err := readFileConfig(g.dataDir)
			if err != nil {
				return err
			}
			if cl := memberOf(g.dataDir); cl != "" && (bootstrap || token != "") {
				flag := "--bootstrap"
				if token != "" {
					flag = "--join"
				}
				return &statusError{code: exitUsage, err: fmt.Errorf("%s: this node is already a member of cluster %s (its state is in %s); "+
					"start it without --bootstrap or --join to resume, or init a new data directory to start a new node", flag, cl, g.dataDir)}
			}
			if err := secureDataDir(cmd, g.dataDir); err != nil {
				return err
			}
			if os.Getenv("GOLOG_LOG_LEVEL") == "" {
				logging.SetLogLevelRegex("p2pkey/.*", "info")
			}
			cfg := node.DefaultConfig(g.dataDir)
			cfg.ListenAddrs, cfg.AnnounceAddrs = fc.Listen, fc.Announce
			cfg.Bootstrap, cfg.Join = bootstrap, token
			cfg.Relays = append(append([]string(nil), fc.Relays...), relays...)
			cfg.NATPortMap = natPortMap || fc.NATPortMap
			cfg.MDNS = !noMDNS
			cfg.RelayService = !noRelayService
			cfg.Reachability = reachability
			cfg.MaxGenerationsBehind = maxBehind
			cfg.LapseGrace = lapseGrace
			if heartbeat > 0 {
				cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = heartbeat, heartbeat, heartbeat/2
			}
			if err := cfg.Validate(); err != nil {
				return &statusError{code: exitUsage, err: err}
			}
			sockets, err := ks.resolve(cmd, fc)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var web *opsweb.Server
			if metricsAddr != "" {
				// The listener comes up before the node, so a port in use
				// fails the start, and the page says "starting" until the
				// node is attached.
				web = opsweb.New()
				addr, err := opsweb.Start(ctx, metricsAddr, web)
				if err != nil {
					return fmt.Errorf("--metrics %s: %w", metricsAddr, err)
				}
				cfg.Observer, cfg.Metrics = web, true
				daemonLog.Infow("metrics and status page listening", "url", "http://"+addr.String()+"/", "metrics", "http://"+addr.String()+opsweb.PathMetrics)
			}
			sd := newSystemd(cmd.ErrOrStderr())
			if cfg.Join != "" {
				sd.status("joining the cluster")
			} else {
				sd.status("starting")
			}
			n, err := node.Start(ctx, cfg)
			if err != nil {
				sd.stopping("failed: " + err.Error())
				return err
			}
			if web != nil {
				web.Attach(n)
				defer web.Attach(nil)
			}
			servers, err := sockets.serve(n)
			if err != nil {
				sd.stopping("failed: " + err.Error())
				n.Close()
				return err
			}
			var sdDone <-chan struct{}
			shutdown := func(why string) error {
				stop()
				<-sdDone
				sd.stopping(why)
				for _, s := range servers {
					s.Close()
				}
				return n.Close()
			}
			events, cancel := n.Events()
			defer cancel()
			cluster := n.Status().ClusterID // from disk while the ledger catches up
			daemonLog.Infow(fmt.Sprintf("node %s running in cluster %s", n.ID(), cluster), "peer", n.ID(), "cluster", cluster, "socket", cfg.SocketPath())
			sdDone = sd.watch(ctx, n)
			if !keepStartupPages {
				go releaseStartupPagesWhenSettled(ctx, n, startupPagesAfter)
			}
			for {
				select {
				case <-ctx.Done():
					daemonLog.Infow("shutting down")
					return shutdown("shutting down")
				case e, ok := <-events:
					if !ok {
						return shutdown("shutting down")
					}
					if e.Type == node.EventLeft && e.Peer == n.ID() {
						daemonLog.Infow("this node has left the cluster; exiting")
						return shutdown("this node has left the cluster")
					}
				}
			}
		},
	}
	cmd.Flags().BoolVar(&bootstrap, "bootstrap", false, "create a new cluster with this node as its first member")
	cmd.Flags().StringVar(&join, "join", "", "join a cluster with this invite; - reads it from stdin (an invite given here shows in ps)")
	cmd.Flags().StringVar(&joinFile, "join-file", "", "join a cluster with the invite in this file")
	cmd.Flags().StringArrayVar(&relays, "relay", nil, "multiaddr (with /p2p/ID) of a member that relays for this node behind NAT (repeatable)")
	cmd.Flags().BoolVar(&natPortMap, "nat-portmap", false, "ask the LAN's router for a port mapping (UPnP, NAT-PMP)")
	cmd.Flags().BoolVar(&noMDNS, "no-mdns", false, "do not look for members on the local network with mDNS")
	cmd.Flags().BoolVar(&noRelayService, "no-relay-service", false, "do not relay for other members when publicly reachable")
	cmd.Flags().StringVar(&reachability, "reachability", "", "override NAT detection: public or private")
	cmd.Flags().Uint32Var(&maxBehind, "max-generations-behind", 0, "with --bootstrap: how many generations an absent member's old shares are kept before it must be invited again (default 3)")
	cmd.Flags().DurationVar(&lapseGrace, "lapse-grace", 0, "with --bootstrap: how long an absent member's old shares outlive --max-generations-behind (default 1h, at most 720h)")
	cmd.Flags().StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics (/metrics) and a live status page (/) on this address, for example 127.0.0.1:9476 (off by default; keep it on loopback or behind a proxy)")
	ks.register(cmd)
	cmd.Flags().DurationVar(&heartbeat, "raft-heartbeat", 0, "Raft heartbeat and election timeout (default 3s, consensus.LANTiming)")
	cmd.Flags().MarkHidden("raft-heartbeat")
	cmd.Flags().BoolVar(&keepStartupPages, "keep-startup-pages", false, "keep the executable's pages used only while starting mapped (by default they are released once the node has its key and the cluster has been quiet for 30 s; see docs/DESIGN.md, \"Idle cost\")")
	cmd.Flags().DurationVar(&startupPagesAfter, "startup-pages-after", defaultStartupPagesAfter, "how long the cluster must be quiet, once the node has its key, before the start-up pages are released")
	cmd.Flags().MarkHidden("startup-pages-after")
	return cmd
}

// defaultStartupPagesAfter is how long a daemon that has its key waits for
// its cluster to be quiet (no member, leader or generation change) before it
// releases its start-up pages: joins, elections and re-shares run code the
// idle daemon does not, and would fault much of it back in.
const defaultStartupPagesAfter = 30 * time.Second

// settling reports whether an event means the cluster is still changing.
// The leader's re-announcement of the newest generation (every 30 s) and
// unlock progress do not.
func settling(e node.Event) bool {
	switch e.Type {
	case node.EventJoined, node.EventMemberAdded, node.EventMemberRemoved, node.EventMemberChanged,
		node.EventLeaderChanged, node.EventGenerationOpen, node.EventGenerationDone, node.EventCatchingUp:
		return true
	}
	return false
}

// releaseStartupPagesWhenSettled waits until the node has its key (unlocked,
// or a first member's key not escrowed yet) and its cluster has been quiet
// for after, then releases the executable's start-up pages once
// (releaseStartupPages).
func releaseStartupPagesWhenSettled(ctx context.Context, n *node.Node, after time.Duration) {
	events, cancel := n.Events()
	defer cancel()
	quiet := time.NewTimer(after)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-events:
			if !ok {
				return
			}
			if settling(e) {
				quiet.Reset(after)
			}
			continue
		case <-quiet.C:
		}
		if state, _ := n.LockState(); state != node.LockLocked {
			break // unlocked, or holding a key not escrowed yet
		}
		quiet.Reset(after)
	}
	cancel()
	before, now, err := releaseStartupPages()
	if err != nil {
		daemonLog.Infow("start-up pages kept", "reason", err)
		return
	}
	daemonLog.Infow("released the executable's start-up pages", "resident_before_mb", mb(before), "resident_after_mb", mb(now))
}

func mb(b int64) float64 { return float64(b*10/(1<<20)) / 10 }

func newInviteCmd(g *globals) *cobra.Command {
	var ttl, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "invite [--ttl DURATION]",
		Short: "Print a single-use invite for a new node",
		Long: `invite asks the running daemon for a single-use invite and prints it on
stdout. The invite carries the cluster ID, a secret and the addresses of live
members. Only a hash of the secret is recorded in the cluster's ledger. It
expires after --ttl: at least 1m, at most 168h (7 days), 1h by default.

The invite is recorded through Raft, so it needs a leader: without one (no
quorum of members reachable) invite fails at once and says which members this
node cannot reach.`,
		Example: `  p2pkey invite
  p2pkey invite --ttl 10m > invite.txt
  p2pkey invite --json | jq -r .invite`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkTTL(ttl); err != nil {
				return err
			}
			if err := checkTimeout(timeout); err != nil {
				return err
			}
			c := g.client()
			// An invite is a ledger entry: without a Raft leader it cannot be
			// recorded, so say so now rather than after the timeout.
			sctx, scancel := reqCtx(cmd, diagnoseTimeout)
			st, err := c.Status(sctx)
			scancel()
			var ae *node.APIError
			if err != nil && !errors.As(err, &ae) {
				return explain(c, err, "issue an invite", diagnoseTimeout, false)
			}
			if err == nil && st.Raft.Leader == "" {
				return fmt.Errorf("cannot issue an invite: %s", noLeader(st))
			}
			ctx, cancel := reqCtx(cmd, timeout)
			defer cancel()
			inv, err := c.Invite(ctx, ttl)
			if err != nil {
				return explain(c, err, "issue an invite", timeout, false)
			}
			if g.jsonOut {
				return printJSON(cmd.OutOrStdout(), inv)
			}
			fmt.Fprintln(cmd.OutOrStdout(), inv.Invite)
			fmt.Fprintf(cmd.ErrOrStderr(), "invite expires at %s\n", inv.ExpiresAt.Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the invite stays valid (1m to 168h)")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up when the cluster has not recorded the invite after this long")
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}
