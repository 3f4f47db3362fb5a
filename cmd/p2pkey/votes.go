package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// What remove and leave destroy, said before they do it.
const (
	leaveLoss = "this node's K will be unrecoverable once it leaves; files encrypted under it are lost"
	// removeLoss takes the target's peer ID.
	removeLoss = "the first vote suspends %s at once (holders stop serving its shares, so it cannot unlock); " +
		"once a majority of the other active members have voted, the removal is final: its shares are deleted, " +
		"and its K and every file encrypted under it are lost"
)

func newRemoveCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "remove PEER [--yes] [--json]",
		Short: "Vote to remove a member (the first vote suspends it)",
		Long: `remove records this node's vote to remove a member (rule R2). The first vote
suspends the member at once: holders keep its shares but stop serving them, so
it cannot unlock from then on. When a majority of the other active members have
voted, the removal is final (rule R1): holders delete its shares, it leaves the
Raft configuration, and a new key generation opens without it. Its K, and every
file encrypted under it, is then lost, and it can never rejoin with the same
identity. 'reinstate' votes the other way.

It prints the target's status and the votes so far, for example
  12D3KooW...: suspended (remove votes: 1 of 2 needed)
and --json prints the vote result object (target, kind, votes, needed, final,
status).

On a terminal, remove says what will be lost and asks for confirmation; it
warns when the cluster would be left with fewer than 3 members. Without a
terminal it refuses unless --yes is given (exit 2).

PEER is a peer ID, or any unambiguous abbreviation of a member's: its start
(12D3KooWQx) or the short form the tables print (12D3KooW…x7Qd2a).`,
		Example: `  p2pkey remove 12D3KooWQ...
  p2pkey remove --yes --json 12D3KooWQ... | jq .final`,
		Args: usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, time.Minute)
			defer cancel()
			c := g.client()
			st, err := c.Status(ctx)
			if err != nil {
				return explain(c, forbiddenAs("remove", err), "read the status", time.Minute, false)
			}
			id, err := resolvePeer(ctx, c, &st, args[0])
			if err != nil {
				return err
			}
			act := destructiveAct{
				question: fmt.Sprintf("Vote to remove %s?", id),
				loss:     fmt.Sprintf(removeLoss, id),
				warning:  sizeWarning(activeOtherThan(st, id.String())),
				refusal:  fmt.Sprintf("refusing to vote to remove %s without confirmation", id),
			}
			if err := confirmAct(cmd, yes, act); err != nil {
				return err
			}
			res, err := c.Remove(ctx, id)
			if err != nil {
				return explain(c, err, "record the remove vote", time.Minute, false)
			}
			return printVote(cmd, g, res)
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation (needed without a terminal)")
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print the vote result as JSON")
	return cmd
}

func newReinstateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reinstate PEER [--json]",
		Short: "Vote to lift a member's suspension",
		Long: `reinstate records this node's vote to lift a suspended member's suspension
(rule R2). When a majority of the other active members have voted, holders
serve its shares again and it can unlock with its old K. A removal that is
already final cannot be undone.

It prints the target's status and the votes so far, for example
  12D3KooW...: suspended (reinstate votes: 1 of 2 needed)
and --json prints the vote result object.

PEER is a peer ID, or any unambiguous abbreviation of a member's: its start
(12D3KooWQx) or the short form the tables print (12D3KooW…x7Qd2a).`,
		Example: `  p2pkey reinstate 12D3KooWQ...`,
		Args:    usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, time.Minute)
			defer cancel()
			c := g.client()
			id, err := resolvePeer(ctx, c, nil, args[0])
			if err != nil {
				return err
			}
			res, err := c.Reinstate(ctx, id)
			if err != nil {
				return explain(c, err, "record the reinstate vote", time.Minute, false)
			}
			return printVote(cmd, g, res)
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print the vote result as JSON")
	return cmd
}

// leaveJSON is `leave --json`.
type leaveJSON struct {
	Left      string `json:"left"`
	ClusterID string `json:"cluster_id"`
}

func newLeaveCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "leave [--yes] [--json]",
		Short: "Take this node out of the cluster",
		Long: `leave takes this node out of the cluster at once (rule R1; no vote is needed
for a node's own departure), and the daemon exits. Holders delete this node's
shares, so its K can never be unlocked again: files encrypted under it are lost.

On a terminal, leave says so and asks for confirmation; it warns when the
cluster would be left with fewer than 3 members. Without a terminal it refuses
unless --yes is given (exit 2).`,
		Example: `  p2pkey leave
  p2pkey leave --yes`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, time.Minute)
			defer cancel()
			c := g.client()
			raw, err := c.StatusJSON(ctx)
			if err != nil {
				return explain(c, forbiddenAs("leave", err), "read the status", time.Minute, false)
			}
			st, _, err := decodeStatus(raw)
			if err != nil {
				return err
			}
			act := destructiveAct{
				question: "Leave the cluster?",
				loss:     leaveLoss + leaveKitNote(decodeKit(raw)),
				warning:  sizeWarning(activeOtherThan(st, st.PeerID)),
				refusal:  "refusing to leave the cluster without confirmation",
			}
			if err := confirmAct(cmd, yes, act); err != nil {
				return err
			}
			if err := c.Leave(ctx); err != nil {
				return explain(c, err, "leave the cluster", time.Minute, false)
			}
			if g.jsonOut {
				return printJSON(cmd.OutOrStdout(), leaveJSON{Left: st.PeerID, ClusterID: st.ClusterID})
			}
			fmt.Fprintln(cmd.OutOrStdout(), "left the cluster")
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation (needed without a terminal)")
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print {left, cluster_id} as JSON")
	return cmd
}

// forbiddenAs names the command a key socket refused: remove and leave
// read the status first, which is what the socket refuses.
func forbiddenAs(command string, err error) error {
	if errors.Is(err, node.ErrForbidden) {
		return fmt.Errorf("%s refused: %w", command, err)
	}
	return err
}

// leaveKitNote adds to leave's loss what a recovery kit changes.
func leaveKitNote(k *node.RecoveryKitStatus) string {
	if k != nil && k.CurrentKey {
		return fmt.Sprintf(" (except through the recovery kit made %s, which still holds it)", k.CreatedAt.Format(time.RFC3339))
	}
	return " (no recovery kit was made for it: 'p2pkey recovery-kit' makes one)"
}

// voteLine is the one-line report of a vote.
func voteLine(v node.VoteResult) string {
	switch {
	case v.Kind == "remove" && v.Final:
		return fmt.Sprintf("%s: removed (final)", v.Target)
	case v.Kind == "reinstate" && v.Final:
		return fmt.Sprintf("%s: reinstated (%s)", v.Target, v.Status)
	default:
		return fmt.Sprintf("%s: %s (%s votes: %d of %d needed)", v.Target, v.Status, v.Kind, v.Votes, v.Needed)
	}
}

func printVote(cmd *cobra.Command, g *globals, v node.VoteResult) error {
	if g.jsonOut {
		return printJSON(cmd.OutOrStdout(), v)
	}
	fmt.Fprintln(cmd.OutOrStdout(), voteLine(v))
	return nil
}

// activeOtherThan counts the active members other than id: the cluster's
// size once id is gone.
func activeOtherThan(st node.Status, id string) int {
	n := 0
	for _, m := range st.Members {
		if m.Status == "active" && m.PeerID != id {
			n++
		}
	}
	return n
}

// sizeWarning says what a cluster of n members can no longer do, or "" when
// it has 3 or more (rules G1, K1).
func sizeWarning(n int) string {
	switch {
	case n >= 3:
		return ""
	case n == 2:
		return "this leaves the cluster with 2 members: with 2 members, one node down blocks the other's unlock"
	default:
		return fmt.Sprintf("this leaves the cluster with %d member: a cluster of one cannot protect K", n)
	}
}

// destructiveAct is what confirmAct tells the operator before an act that
// loses a key.
type destructiveAct struct {
	question string // "Leave the cluster?"
	loss     string // what is lost
	warning  string // the cluster-size warning, or ""
	refusal  string // the error without a terminal and --yes
}

// confirmAct asks for confirmation on a terminal; see confirm.
func confirmAct(cmd *cobra.Command, yes bool, act destructiveAct) error {
	in := cmd.InOrStdin()
	return confirm(in, cmd.ErrOrStderr(), isTerminal(in), yes, act)
}

// confirm applies the confirmation rule of remove and leave. The cluster-size
// warning is printed in every case. With yes, the act goes ahead. Without
// yes, on a terminal (interactive) the loss is stated and the operator must
// answer "yes" (or "y"); anything else, or end of input, aborts (exit 1).
// Without yes and without a terminal it fails safe: a script that did not
// say --yes gets exit 2 and a message naming --yes, and nothing is done.
func confirm(in io.Reader, errw io.Writer, interactive, yes bool, act destructiveAct) error {
	if act.warning != "" {
		fmt.Fprintf(errw, "p2pkey: warning: %s\n", act.warning)
	}
	if yes {
		return nil
	}
	if !interactive {
		//lint:ignore ST1005 a whole message for the operator, in sentences
		return &statusError{code: exitUsage, err: fmt.Errorf("%s: stdin is not a terminal; pass --yes to confirm.\n%s.", act.refusal, capitalise(act.loss))}
	}
	fmt.Fprintf(errw, "%s\n%s.\nType yes to continue: ", act.question, capitalise(act.loss))
	line, err := bufio.NewReader(io.LimitReader(in, 1024)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	answer := strings.ToLower(strings.TrimSpace(line))
	switch {
	case answer == "yes" || answer == "y":
		return nil
	case answer == "" && errors.Is(err, io.EOF):
		// No answer at all: stdin was not really a terminal (/dev/null).
		fmt.Fprintln(errw)
		return &statusError{code: exitUsage, err: fmt.Errorf("%s: no answer on stdin; pass --yes to confirm", act.refusal)}
	}
	return errors.New("not confirmed; nothing was done")
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// isTerminal reports whether r is a character device, as a terminal is.
// /dev/null is one too, but reading it gives end of input with no answer,
// which confirm refuses as it would without a terminal.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
