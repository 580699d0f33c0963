package servercli

import "log/slog"

// fitOpenFiles lowers the gateway's visitor cap to what the process's
// open-file limit can hold (each visitor connection is a descriptor), and
// says so at Warn.
func fitOpenFiles(maxVisitors int, log *slog.Logger) int {
	limit, ok := openFileLimit()
	if !ok {
		return maxVisitors
	}
	fit, reserve := fitVisitors(maxVisitors, limit)
	if fit < maxVisitors {
		log.Warn("--max-visitors lowered to fit the open-file limit (raise it with ulimit -n or LimitNOFILE)",
			"max_visitors", fit, "asked", maxVisitors, "open_file_limit", limit, "reserved", reserve)
	}
	return fit
}

// fitVisitors is the visitor cap that leaves, under an open-file limit, a
// reserve of descriptors for everything else (agent sessions, the tunnels'
// public ports, state files): a quarter of the limit, at least 256.
func fitVisitors(maxVisitors int, limit uint64) (fit int, reserve uint64) {
	reserve = max(limit/4, 256)
	if limit <= reserve {
		return 1, reserve
	}
	if avail := limit - reserve; uint64(maxVisitors) > avail {
		return int(avail), reserve
	}
	return maxVisitors, reserve
}
