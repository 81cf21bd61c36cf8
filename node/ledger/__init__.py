"""The replicated application behind consensus (ABCI-like): accounts and transfers for now."""
