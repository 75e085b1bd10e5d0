-- wrk script for bench/throughput.sh: sends the deliveries of a file made by gen-events.mjs,
-- each exactly once, as POST /webhooks/<provider> with its Stripe-Signature header.
--
--   wrk -t THREADS ... -s bench/webhooks.lua URL -- EVENTS_FILE RESULTS_PREFIX PROVIDER THREADS
--
-- Thread i of n sends lines i, i+n, i+2n, ... of the file; when a thread has sent all of its
-- lines it stops (the run then ends early and says so). Each answer is appended to
-- RESULTS_PREFIX.<thread> as "<status> <event_id> <outcome>" (event_id and outcome from the JSON
-- answer), so that the caller can check by SQL that every 2xx event is stored; done() writes
-- RESULTS_PREFIX.sent, one line per thread, "<thread> <lines taken> <1 if it ran out> <lines not
-- sent>", from which the caller knows which deliveries went out (a thread takes its lines in
-- order), to check that no answer names an event sent fewer times than answered. wrk calls the
-- first thread's request() once before the run, to see how many requests it returns: that
-- thread's first line is taken and never sent.
-- done() prints one line: RESULT key=value ...
--
-- wrk runs each thread's init() in its main thread one after the other, starting each thread as
-- soon as its own init() is done, and starts its clock only after the last: the first thread's
-- answers during the others' init() would count without their time. So each thread marks
-- RESULTS_PREFIX-ready.<thread> when loaded, and the rate counts only the answers received once
-- every thread is ready (requests_timed); all answers are still written and checked.

local threads = {}
local nthreads = 0

function setup(thread)
	nthreads = nthreads + 1
	thread:set("tid", nthreads)
	table.insert(threads, thread)
end

function init(args)
	local file, prefix, provider = args[1], args[2], args[3]
	local n = tonumber(args[4])		-- wrk's -t, which a thread cannot see otherwise
	local path = "/webhooks/" .. provider
	-- each request is formatted here, before the clock counts (see above), not in request(): the
	-- load generator's own work per request takes CPU from the shim and PostgreSQL on this machine
	reqs = {}
	local line_no = 0
	for line in io.lines(file) do
		if line_no % n == tid - 1 then
			local tab = line:find("\t", 1, true)
			reqs[#reqs + 1] = wrk.format("POST", path,
				{ ["Content-Type"] = "application/json", ["User-Agent"] = "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
				  ["Stripe-Signature"] = line:sub(1, tab - 1) },
				line:sub(tab + 1))
		end
		line_no = line_no + 1
	end
	nextev = 1
	exhausted = 0
	sent = 0
	n2xx, nother = 0, 0
	sent_file = prefix .. ".sent"
	out = assert(io.open(prefix .. "." .. tid, "w"))
	out:setvbuf("full", 1048576)
	ready_prefix = prefix .. "-ready."
	nthreads_all = n
	all_ready = false
	timed = 0
	assert(io.open(ready_prefix .. tid, "w")):close()
end

-- Whether every thread has loaded its deliveries (checked until true)
local function everyone_ready()
	for t = 1, nthreads_all do
		local f = io.open(ready_prefix .. t, "r")
		if not f then return false end
		f:close()
	end
	return true
end

function request()
	local i = nextev
	if i > #reqs then
		exhausted = 1
		wrk.thread:stop()
		i = #reqs		-- one more re-delivery may still go out: harmless, checked like the others
	else
		nextev = i + 1
		sent = sent + 1
	end
	return reqs[i]
end

function response(status, headers, body)
	if status >= 200 and status < 300 then n2xx = n2xx + 1 else nother = nother + 1 end
	local id = body:match('"event_id"%s*:%s*"([^"]*)"') or "-"
	local outcome = body:match('"outcome"%s*:%s*"([^"]*)"') or "-"
	out:write(status, " ", id, " ", outcome, "\n")
	if (n2xx + nother) % 4096 == 0 then out:flush() end
	if all_ready then
		timed = timed + 1
	elseif everyone_ready() then
		all_ready = true
	end
end

function done(summary, latency, requests)
	local n2, no, ex, tm = 0, 0, 0, 0
	local sent_out = assert(io.open(threads[1]:get("sent_file"), "w"))
	for _, t in ipairs(threads) do
		sent_out:write(t:get("tid"), " ", t:get("sent"), " ", t:get("exhausted"), " ", t:get("tid") == 1 and 1 or 0, "\n")
		n2 = n2 + t:get("n2xx")
		no = no + t:get("nother")
		ex = ex + t:get("exhausted")
		tm = tm + t:get("timed")
	end
	sent_out:close()
	local e = summary.errors
	io.write(string.format(
		"RESULT requests=%d requests_timed=%d duration_us=%d rps=%.1f rps_wrk=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
		"answers_2xx=%d answers_other=%d wrk_status_errors=%d connect_errors=%d read_errors=%d " ..
		"write_errors=%d timeouts=%d threads_exhausted=%d\n",
		summary.requests, tm, summary.duration, tm / (summary.duration / 1e6), summary.requests / (summary.duration / 1e6),
		latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
		n2, no, e.status, e.connect, e.read, e.write, e.timeout, ex))
end
