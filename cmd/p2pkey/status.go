package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// The CLI's JSON uses one name per idea (issue 16):
//   shares_held  how many of an owner's shares are held (was also "have"
//                and "held[]")
//   threshold    how many shares open K (was also "need")
//   owners_escrowed  how many owners of a generation are escrowed (was
//                "escrowed")
// status --json passes the daemon's object through, with unlock.have and
// unlock.need renamed to these (see renameUnlock).

func newStatusCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show the node, the cluster, the lock state and every member's coverage",
		Long: `status shows this node's peer ID, the cluster ID, the lock state of its key,
its view of Raft (state, leader, term), the current and open key generations,
and one row per member with its Raft role, status, connection and share
coverage.

"reachable" is AutoNAT's verdict on this node: public (others can dial it),
private (behind NAT: reached by hole punching or through a relay) or unknown
(AutoNAT has not decided yet; it needs peers that can dial back, so on a LAN
or loopback it may stay unknown, which is harmless).

--json prints the same as a JSON object with at least: peer_id, cluster_id,
lock ("unlocked", "locked" or "unescrowed"), unlock {generation, shares_held,
threshold, reason}, raft.state, raft.leader, generation.current,
generation.open (null when none), and members[] with peer_id, status,
escrow_generation, shares_held, threshold.`,
		Example: `  p2pkey status
  p2pkey status --json | jq '.members[] | {peer_id, shares_held}'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readStatus(cmd, g)
			if err != nil {
				return err
			}
			if g.jsonOut {
				// As the daemon sent it: fields this CLI does not know yet too.
				return printJSON(cmd.OutOrStdout(), renameUnlock(raw))
			}
			st, votes, err := decodeStatus(raw)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "peer:        %s\n", st.PeerID)
			fmt.Fprintf(w, "cluster:     %s\n", orNone(st.ClusterID, "(not known yet: the ledger is empty until this node hears from the cluster)"))
			fmt.Fprintf(w, "lock:        %s\n", lockLine(st))
			if u := st.Unlock; st.Lock != node.LockUnlocked && (len(u.Answered) > 0 || len(u.Awaiting) > 0) {
				fmt.Fprintf(w, "holders:     %s\n", holdersLine(st))
			}
			fmt.Fprintf(w, "recovery:    %s\n", kitLine(decodeKit(raw)))
			fmt.Fprintf(w, "reachable:   %s\n", reachLine(st.Reachability))
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
				open = fmt.Sprintf("%d (%s, threshold %d, deadline %s)", o.Number, plural(o.Members, "member"), o.Threshold, o.Deadline.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "generation:  current %s, open %s\n", cur, open)
			if warn := clusterWarning(st); warn != "" {
				fmt.Fprintf(w, "warning:     %s\n", warn)
			}
			if st.Raft.Leader == "" && len(st.Members) > 0 {
				fmt.Fprintf(w, "warning:     %s\n", noLeaderShort(st))
			}
			fmt.Fprintln(w)
			printMembers(w, st, votes, false)
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}

func orNone(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

// lockLine is status's lock line: the state, then why (once: no "locked
// (locked: ...)").
func lockLine(st node.Status) string {
	u := st.Unlock
	switch {
	case st.Lock != node.LockUnlocked && (u.Reason != "" || u.Need > 0):
		return string(st.Lock) + ": " + lockReason(st)
	case st.Lock == node.LockUnlocked && u.Need > 0:
		return fmt.Sprintf("unlocked (generation %d: %s held, threshold %d)", u.Generation, plural(u.Have, "share"), u.Need)
	}
	return string(st.Lock)
}

// holdersLine names the holders that answered the last unlock attempt and
// those still awaited.
func holdersLine(st node.Status) string {
	name := func(ids []string) string {
		out := make([]string, len(ids))
		for i, id := range ids {
			out[i] = short(id)
			if id == st.PeerID {
				out[i] += " (self)"
			}
		}
		return strings.Join(out, ", ")
	}
	u := st.Unlock
	var parts []string
	if len(u.Answered) > 0 {
		parts = append(parts, "answered "+name(u.Answered))
	}
	if len(u.Awaiting) > 0 {
		parts = append(parts, "waiting on "+name(u.Awaiting))
	}
	return strings.Join(parts, "; ")
}

// reachLine explains AutoNAT's verdict.
func reachLine(r string) string {
	switch r {
	case "public":
		return "public (other peers can dial this node directly)"
	case "private":
		return "private (behind NAT: peers reach it by hole punching or through a relay)"
	case "unknown", "":
		return "unknown (AutoNAT has not decided yet: it needs peers that can dial back; usual and harmless on a LAN or loopback)"
	}
	return r
}

// renameUnlock renames unlock.have and unlock.need in the daemon's status
// JSON to shares_held and threshold, the names the rest of the CLI's JSON
// uses; any other field passes through as the daemon sent it.
func renameUnlock(raw json.RawMessage) any {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	var u map[string]json.RawMessage
	if json.Unmarshal(m["unlock"], &u) != nil || u == nil {
		return m
	}
	for from, to := range map[string]string{"have": "shares_held", "need": "threshold"} {
		if v, ok := u[from]; ok {
			if _, dup := u[to]; !dup {
				u[to] = v
			}
			delete(u, from)
		}
	}
	m["unlock"], _ = json.Marshal(u)
	return m
}

// role is a member's part in Raft as this node sees it: leader, follower
// (a voter), non-voter, or "-" for one out of the configuration; for this
// node, its own Raft state.
func role(st node.Status, m node.MemberInfo) string {
	switch {
	case st.Raft.Leader != "" && m.PeerID == st.Raft.Leader:
		return "leader"
	case m.PeerID == st.PeerID && st.Raft.State != "" && (m.Voter || st.Raft.Voter):
		return strings.ToLower(st.Raft.State)
	case m.Voter:
		return "follower"
	case m.Status == "active" || m.Status == "joining" || m.Status == "suspended":
		return "non-voter"
	}
	return "-"
}

// printMembers prints the member table. IDs are printed whole: every
// command that takes a peer ID accepts them (and their abbreviations).
func printMembers(w io.Writer, st node.Status, votes map[string]memberVotes, addrs bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "MEMBER\tROLE\tSTATUS\tCONNECTION\tESCROW GEN\tSHARES HELD\t"
	if addrs {
		head += "ADDRESSES\t"
	}
	fmt.Fprintln(tw, head+"NOTE")
	for _, m := range st.Members {
		id := m.PeerID
		if id == st.PeerID {
			id += " (self)"
		}
		gen, held := "-", "-"
		if m.EscrowGeneration != nil {
			gen = fmt.Sprint(*m.EscrowGeneration)
			held = fmt.Sprintf("%d, threshold %d", m.SharesHeld, m.Threshold)
		}
		note := m.Reason
		if m.Status == "unknown" {
			note = "known from this node's disk; the ledger has not caught up since it started"
		}
		if m.CatchingUp {
			note = fmt.Sprintf("catching up (%s behind)", plural(m.Behind, "generation"))
		}
		if v := votes[m.PeerID].note(m.Status); v != "" {
			note = strings.TrimPrefix(note+"; "+v, "; ")
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t", id, role(st, m), m.Status, m.Connection, gen, held)
		if addrs {
			line += addrList(m.Addrs) + "\t"
		}
		fmt.Fprintln(tw, line+note)
	}
	tw.Flush()
}

// addrList is a member's addresses in a table cell: the first two, then
// how many more.
func addrList(addrs []string) string {
	// The /p2p/ID each address ends with repeats the MEMBER column.
	trimmed := make([]string, len(addrs))
	for i, a := range addrs {
		if j := strings.LastIndex(a, "/p2p/"); j > 0 {
			a = a[:j]
		}
		trimmed[i] = a
	}
	addrs = trimmed
	switch {
	case len(addrs) == 0:
		return "-"
	case len(addrs) <= 2:
		return strings.Join(addrs, ",")
	}
	return fmt.Sprintf("%s,%s (+%d more)", addrs[0], addrs[1], len(addrs)-2)
}

func short(id string) string {
	if len(id) > 16 {
		return id[:8] + "…" + id[len(id)-6:]
	}
	return id
}

// membersJSON is `members --json`. Members are the daemon's member objects
// as it sent them, each with "role" added.
type membersJSON struct {
	Self    string                       `json:"self"`
	Leader  string                       `json:"leader"`
	Term    uint64                       `json:"term"`
	Members []map[string]json.RawMessage `json:"members"`
}

func newMembersCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "members [--json]",
		Short: "List the cluster's members, their Raft roles and addresses",
		Long: `members lists every member the ledger knows, with its Raft role (leader,
follower, candidate, non-voter, or - when out of the Raft configuration), its
status (joining, active, suspended, removed, rejected), how this node reaches
it, its share coverage, the addresses it announced, and the remove and
reinstate votes cast about it. The first line names the Raft leader.

Member IDs are printed whole; remove and reinstate take them, or any
unambiguous start of one.

--json prints {self, leader, term, members[]}, each member with peer_id, role,
status, voter, connection, addrs, escrow_generation, shares_held, threshold.`,
		Example: `  p2pkey members
  p2pkey members --json | jq -r '.members[] | select(.status=="active") | .peer_id'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readStatus(cmd, g)
			if err != nil {
				return err
			}
			st, votes, err := decodeStatus(raw)
			if err != nil {
				return err
			}
			if g.jsonOut {
				var full struct {
					Members []map[string]json.RawMessage `json:"members"`
				}
				if err := json.Unmarshal(raw, &full); err != nil {
					return fmt.Errorf("status from the daemon: %w", err)
				}
				out := membersJSON{Self: st.PeerID, Leader: st.Raft.Leader, Term: st.Raft.Term, Members: full.Members}
				if out.Members == nil {
					out.Members = []map[string]json.RawMessage{}
				}
				for i, m := range out.Members {
					if i < len(st.Members) {
						m["role"], _ = json.Marshal(role(st, st.Members[i]))
					}
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			if st.Raft.Leader != "" {
				fmt.Fprintf(w, "leader: %s, term %d\n\n", st.Raft.Leader, st.Raft.Term)
			} else {
				fmt.Fprintf(w, "leader: none: %s\n\n", noLeaderShort(st))
			}
			printMembers(w, st, votes, true)
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}

// readStatus asks the daemon for its status object, as it sends it.
func readStatus(cmd *cobra.Command, g *globals) ([]byte, error) {
	ctx, cancel := reqCtx(cmd, 10*time.Second)
	defer cancel()
	c := g.client()
	raw, err := c.StatusJSON(ctx)
	if err != nil {
		return nil, explain(c, err, "read the status", 10*time.Second, false)
	}
	return raw, nil
}
