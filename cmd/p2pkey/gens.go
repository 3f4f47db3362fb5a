package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newGenerationsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "generations [--json]",
		Short: "List key generations with their owner x holder matrix",
		Long: `generations lists every key generation the ledger knows: its state (open,
committed, aborted, retired), members, threshold and how many owners are
escrowed in it. For live generations it prints the owner x holder matrix: row
= owner, column = holder, '#' = the holder has a recorded envelope of the
owner, '.' = it has none. HELD is the owner's share count against the
threshold.`,
		Example: `  p2pkey generations
  p2pkey generations --json | jq '.[] | select(.current)'`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := reqCtx(cmd, 10*time.Second)
			defer cancel()
			gens, err := g.client().Generations(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return printJSON(cmd.OutOrStdout(), gens)
			}
			w := cmd.OutOrStdout()
			if len(gens) == 0 {
				fmt.Fprintln(w, "no generations yet")
				return nil
			}
			for _, gen := range gens {
				tag := ""
				if gen.Current {
					tag = " (current)"
				}
				fmt.Fprintf(w, "generation %d: %s%s, %d members, threshold %d, %d escrowed\n", gen.Number, gen.State, tag, len(gen.Members), gen.Threshold, gen.Escrowed)
				if gen.Deadline != nil {
					fmt.Fprintf(w, "  deadline %s\n", gen.Deadline.Format(time.RFC3339))
				}
				if len(gen.Joiners) > 0 {
					fmt.Fprintf(w, "  joiners %s\n", strings.Join(shortAll(gen.Joiners), ", "))
				}
				if len(gen.Matrix) == 0 {
					continue
				}
				tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
				fmt.Fprint(tw, "  OWNER \\ HOLDER\t")
				for j := range gen.Members {
					fmt.Fprintf(tw, "%d\t", j+1)
				}
				fmt.Fprintln(tw, "HELD")
				for i, owner := range gen.Members {
					fmt.Fprintf(tw, "  %d %s\t", i+1, short(owner))
					for j := range gen.Members {
						c := "."
						if gen.Matrix[i][j] {
							c = "#"
						}
						fmt.Fprintf(tw, "%s\t", c)
					}
					fmt.Fprintf(tw, "%d/%d\n", gen.Held[i], gen.Threshold)
				}
				tw.Flush()
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	return cmd
}

func shortAll(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = short(id)
	}
	return out
}
