package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/p2pkey/p2pkey/node"
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

func newDaemonCmd(g *globals) *cobra.Command {
	var bootstrap bool
	var join, joinFile string
	var heartbeat time.Duration
	var relays []string
	var natPortMap, noMDNS, noRelayService bool
	var reachability string
	var maxBehind uint32
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
			fmt.Fprintf(cmd.ErrOrStderr(), "p2pkey: node %s running in cluster %s (control socket %s)\n", n.ID(), n.ClusterID(), cfg.SocketPath())
			sdDone = sd.watch(ctx, n)
			for {
				select {
				case <-ctx.Done():
					fmt.Fprintln(cmd.ErrOrStderr(), "p2pkey: shutting down")
					return shutdown("shutting down")
				case e, ok := <-events:
					if !ok {
						return shutdown("shutting down")
					}
					if e.Type == node.EventMemberRemoved && e.Peer == n.ID() && e.Detail == "left" {
						fmt.Fprintln(cmd.ErrOrStderr(), "p2pkey: this node has left the cluster; exiting")
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
	ks.register(cmd)
	cmd.Flags().DurationVar(&heartbeat, "raft-heartbeat", 0, "Raft heartbeat and election timeout (default 2s, consensus.LANTiming)")
	cmd.Flags().MarkHidden("raft-heartbeat")
	return cmd
}

func newInviteCmd(g *globals) *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "invite [--ttl DURATION]",
		Short: "Print a single-use invite for a new node",
		Long: `invite asks the running daemon for a single-use invite and prints it on
stdout. The invite carries the cluster ID, a secret and the addresses of live
members. Only a hash of the secret is recorded in the cluster's ledger. It
expires after --ttl: at least 1m, at most 168h (7 days), 1h by default.`,
		Example: `  p2pkey invite
  p2pkey invite --ttl 10m > invite.txt
  p2pkey invite --json | jq -r .invite`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkTTL(ttl); err != nil {
				return err
			}
			ctx, cancel := reqCtx(cmd, 30*time.Second)
			defer cancel()
			inv, err := g.client().Invite(ctx, ttl)
			if err != nil {
				return err
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
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}

func newStatusCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show the node, the cluster, the lock state and every member's coverage",
		Long: `status shows this node's peer ID, the cluster ID, the lock state of its key,
its view of Raft (state, leader, term), the current and open key generations,
and one row per member with its status, connection and share coverage.

--json prints the same as a JSON object with at least: peer_id, cluster_id,
lock ("unlocked", "locked" or "unescrowed"), raft.state, raft.leader,
generation.current, generation.open (null when none), and members[] with
peer_id, status, escrow_generation, shares_held, threshold.`,
		Example: `  p2pkey status
  p2pkey status --json | jq '.members[] | {peer_id, shares_held}'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, 10*time.Second)
			defer cancel()
			raw, err := g.client().StatusJSON(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				// As the daemon sent it: fields this CLI does not know yet too.
				return printJSON(cmd.OutOrStdout(), raw)
			}
			st, votes, err := decodeStatus(raw)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "peer:        %s\n", st.PeerID)
			fmt.Fprintf(w, "cluster:     %s\n", st.ClusterID)
			lock := st.Lock
			if u := st.Unlock; st.Lock != "unlocked" && u.Reason != "" {
				lock += " (" + u.Reason + ")"
			} else if u.Need > 0 {
				lock += fmt.Sprintf(" (generation %d: %d shares held, threshold %d)", u.Generation, u.Have, u.Need)
			}
			fmt.Fprintf(w, "lock:        %s\n", lock)
			fmt.Fprintf(w, "recovery:    %s\n", kitLine(decodeKit(raw)))
			fmt.Fprintf(w, "reachable:   %s\n", st.Reachability)
			if c := st.CatchingUp; c != nil {
				fmt.Fprintf(w, "catching up: heard of generation %d from %s\n", c.Generation, short(c.From))
			}
			leader := st.Raft.Leader
			if leader == "" {
				leader = "(none)"
			}
			fmt.Fprintf(w, "raft:        %s, term %d, applied %d, leader %s\n", strings.ToLower(st.Raft.State), st.Raft.Term, st.Raft.AppliedIndex, short(leader))
			cur := "(none)"
			if st.Generation.Current != nil {
				cur = fmt.Sprint(*st.Generation.Current)
			}
			open := "(none)"
			if o := st.Generation.Open; o != nil {
				open = fmt.Sprintf("%d (%d members, threshold %d, deadline %s)", o.Number, o.Members, o.Threshold, o.Deadline.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "generation:  current %s, open %s\n", cur, open)
			if warn := clusterWarning(st); warn != "" {
				fmt.Fprintf(w, "warning:     %s\n", warn)
			}
			fmt.Fprintln(w)
			printMembers(w, st.Members, votes, st.PeerID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}

func printMembers(w interface{ Write([]byte) (int, error) }, ms []node.MemberStatus, votes map[string]memberVotes, self string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATUS\tVOTER\tCONNECTION\tESCROW GEN\tSHARES HELD\tNOTE")
	for _, m := range ms {
		id := m.PeerID
		if id == self {
			id += " (self)"
		}
		gen, held := "-", "-"
		if m.EscrowGeneration != nil {
			gen = fmt.Sprint(*m.EscrowGeneration)
			held = fmt.Sprintf("%d (threshold %d)", m.SharesHeld, m.Threshold)
		}
		note := m.Reason
		if m.CatchingUp {
			note = fmt.Sprintf("catching up (%d generations behind)", m.Behind)
		}
		if v := votes[m.PeerID].note(m.Status); v != "" {
			note = strings.TrimPrefix(note+"; "+v, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%s\n", id, m.Status, m.Voter, m.Connection, gen, held, note)
	}
	tw.Flush()
}

func short(id string) string {
	if len(id) > 16 {
		return id[:8] + "…" + id[len(id)-6:]
	}
	return id
}

func newMembersCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "members [--json]",
		Short: "List the cluster's members",
		Long: `members lists every member the ledger knows, with its status (joining, active,
suspended, removed, rejected), whether it votes in Raft, how this node reaches
it, its share coverage, and the remove and reinstate votes cast about it.`,
		Example: `  p2pkey members
  p2pkey members --json | jq -r '.[] | select(.status=="active") | .peer_id'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, 10*time.Second)
			defer cancel()
			raw, err := g.client().StatusJSON(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				var full struct {
					Members json.RawMessage `json:"members"`
				}
				if err := json.Unmarshal(raw, &full); err != nil {
					return fmt.Errorf("status from the daemon: %w", err)
				}
				return printJSON(cmd.OutOrStdout(), full.Members)
			}
			st, votes, err := decodeStatus(raw)
			if err != nil {
				return err
			}
			printMembers(cmd.OutOrStdout(), st.Members, votes, st.PeerID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}
