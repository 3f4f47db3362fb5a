package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// generationsJSON is `generations --json`.
type generationsJSON struct {
	Generations []generationJSON `json:"generations"`
}

// generationJSON is one generation in `generations --json`.
type generationJSON struct {
	Number      uint64     `json:"number"`
	State       string     `json:"state"`
	Current     bool       `json:"current"`
	Members     []string   `json:"members"`
	Threshold   int        `json:"threshold"`
	Joiners     []string   `json:"joiners,omitempty"`
	Removals    []string   `json:"removals,omitempty"`
	OpenedAt    time.Time  `json:"opened_at"`
	Deadline    *time.Time `json:"deadline,omitempty"`
	CommittedAt *time.Time `json:"committed_at,omitempty"`
	// OwnersEscrowed counts the owners with at least threshold shares held.
	OwnersEscrowed int `json:"owners_escrowed"`
	// Owners is the owner x holder matrix of a live (open or committed)
	// generation, one entry per owner; empty for a retired or aborted one,
	// whose envelopes are deleted.
	Owners []ownerJSON `json:"owners,omitempty"`
}

// ownerJSON is one owner's row of a generation's matrix.
type ownerJSON struct {
	PeerID     string   `json:"peer_id"`
	SharesHeld int      `json:"shares_held"`
	Escrowed   bool     `json:"escrowed"`
	Holders    []string `json:"holders"`
}

// live reports whether a generation's envelopes still exist.
func live(state string) bool { return state == "open" || state == "committed" }

func toGenerationJSON(gi node.GenerationInfo) generationJSON {
	out := generationJSON{
		Number: gi.Number, State: gi.State, Current: gi.Current, Members: gi.Members, Threshold: gi.Threshold,
		Joiners: gi.Joiners, Removals: gi.Removals, OpenedAt: gi.OpenedAt, Deadline: gi.Deadline, CommittedAt: gi.CommittedAt,
		OwnersEscrowed: gi.Escrowed,
	}
	if out.Members == nil {
		out.Members = []string{}
	}
	if !live(gi.State) {
		return out
	}
	for i, owner := range gi.Members {
		o := ownerJSON{PeerID: owner, Holders: []string{}}
		if i < len(gi.Held) {
			o.SharesHeld = gi.Held[i]
		}
		if i < len(gi.Matrix) {
			for j, holds := range gi.Matrix[i] {
				if holds && j < len(gi.Members) {
					o.Holders = append(o.Holders, gi.Members[j])
				}
			}
		}
		o.Escrowed = gi.Threshold > 0 && o.SharesHeld >= gi.Threshold
		out.Owners = append(out.Owners, o)
	}
	return out
}

func newGenerationsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "generations [--json]",
		Short: "List key generations with their owner x holder matrix",
		Long: `generations lists every key generation the ledger knows: its state (open,
committed, aborted, retired), members and threshold. For a live (open or
committed) generation it says how many owners are escrowed and prints the
owner x holder matrix: row = owner, column = holder, '#' = the holder has a
recorded envelope of the owner, '.' = it has none. SHARES HELD is how many of
the owner's shares are held, against the threshold that opens its key. A
retired or aborted generation's envelopes are deleted, so it has no matrix.

--json prints {generations[]}, each with number, state, current, members,
threshold, owners_escrowed and, when live, owners[] {peer_id, shares_held,
escrowed, holders[]}.`,
		Example: `  p2pkey generations
  p2pkey generations --json | jq '.generations[] | select(.current)'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, 10*time.Second)
			defer cancel()
			c := g.client()
			gens, err := c.Generations(ctx)
			if err != nil {
				return explain(c, err, "list the generations", 10*time.Second, false)
			}
			if g.jsonOut {
				out := generationsJSON{Generations: []generationJSON{}}
				for _, gi := range gens {
					out.Generations = append(out.Generations, toGenerationJSON(gi))
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			if len(gens) == 0 {
				fmt.Fprintln(w, "no generations yet")
				return nil
			}
			for _, gen := range gens {
				printGeneration(w, gen)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}

func printGeneration(w io.Writer, gen node.GenerationInfo) {
	tag := ""
	if gen.Current {
		tag = " (current)"
	}
	head := fmt.Sprintf("generation %d: %s%s, %s, threshold %d", gen.Number, gen.State, tag, plural(len(gen.Members), "member"), gen.Threshold)
	switch gen.State {
	case "retired":
		fmt.Fprintln(w, head+"; its envelopes are deleted")
		return
	case "aborted":
		fmt.Fprintln(w, head+"; it never committed and its envelopes are deleted")
		return
	}
	fmt.Fprintf(w, "%s, %d of %d owners escrowed\n", head, gen.Escrowed, len(gen.Members))
	if gen.Deadline != nil {
		fmt.Fprintf(w, "  deadline %s\n", gen.Deadline.Format(time.RFC3339))
	}
	if len(gen.Joiners) > 0 {
		fmt.Fprintf(w, "  joiners %s\n", strings.Join(shortAll(gen.Joiners), ", "))
	}
	if len(gen.Matrix) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprint(tw, "  OWNER \\ HOLDER\t")
	for j := range gen.Members {
		fmt.Fprintf(tw, "%d\t", j+1)
	}
	fmt.Fprintln(tw, "SHARES HELD")
	for i, owner := range gen.Members {
		fmt.Fprintf(tw, "  %d %s\t", i+1, short(owner))
		for j := range gen.Members {
			c := "."
			if i < len(gen.Matrix) && j < len(gen.Matrix[i]) && gen.Matrix[i][j] {
				c = "#"
			}
			fmt.Fprintf(tw, "%s\t", c)
		}
		held := 0
		if i < len(gen.Held) {
			held = gen.Held[i]
		}
		note := ""
		if held < gen.Threshold {
			note = " (not escrowed)"
		}
		fmt.Fprintf(tw, "%d, threshold %d%s\n", held, gen.Threshold, note)
	}
	tw.Flush()
	fmt.Fprintln(w, "  # = the holder has the owner's envelope, . = it has none")
}

func shortAll(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = short(id)
	}
	return out
}
