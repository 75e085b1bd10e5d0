# payments: PGXS build of the extension, plus the HTTP shim.
#
#   make            build payments.so and shim/payments-shim
#   make install    install the extension into PostgreSQL 15
#   make installcheck   pg_regress on a temporary instance with pg_cron preloaded
#   make e2e        end-to-end tests: real cluster, real shim, official SDKs
#   make test       install what is missing, build, install, run every test
#   make run        the product, locally, in the foreground
#   make bench      benchmarks (webhook throughput vs pgbench, then report queries on generated data)
#   make fuzz       libFuzzer harnesses of every parser of untrusted input, a bounded run
#   make reliability   the full reliability suite: kill -9, SIGTERM and storms under load
#   make clean

EXTENSION = payments
EXTVERSION = 0.1.0

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

MODULE_big = payments
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard extension/*.c)))
DATA = $(wildcard extension/payments--*.sql)
# relative source paths in debug info make the build reproducible from any checkout
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -ffile-prefix-map=$(CURDIR)=.
SHLIB_LINK = -lcrypto -lcurl -lz

# pg_regress runs on a temporary instance through regress/run-regress, which also
# handles running as root (initdb refuses root), so PGXS's own target is not used.
NO_INSTALLCHECK = 1
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
# the database pg_regress makes is UTF8 whatever the instance's template (the extension needs it)
REGRESS_OPTS += --encoding=UTF8

# JIT bitcode is of no use for this module and would need clang at build time.
override with_llvm = no

EXTRA_CLEAN = shim/payments-shim shim/payments-shim-asan regression.diffs regression.out results fuzz/bin fuzz/obj

# The first targets below must work before PostgreSQL's build files are installed.
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
all: shim/payments-shim
$(OBJS): extension/payments.h
endif

SHIM_SRCS = $(sort $(wildcard shim/*.c))
SHIM_CFLAGS = -std=gnu11 -O2 -g -Wall -Wextra -Werror -I$(shell $(PG_CONFIG) --includedir 2>/dev/null)
SHIM_LIBS = -L$(shell $(PG_CONFIG) --libdir 2>/dev/null) -lmicrohttpd -lpq -lpthread

shim/payments-shim: $(SHIM_SRCS) $(wildcard shim/*.h)
	$(CC) $(SHIM_CFLAGS) -o $@ $(SHIM_SRCS) $(SHIM_LIBS)

# The shim built with AddressSanitizer and UndefinedBehaviorSanitizer, for the tests
shim/payments-shim-asan: $(SHIM_SRCS) $(wildcard shim/*.h)
	$(CC) $(SHIM_CFLAGS) -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined \
		-fno-omit-frame-pointer -o $@ $(SHIM_SRCS) $(SHIM_LIBS)

.PHONY: deps test run installcheck e2e install-for-test bench fuzz fuzz-build reliability

deps:
	@scripts/install-deps.sh

# both test the checkout: built and installed first
installcheck: install-for-test
	regress/run-regress $(REGRESS_OPTS) $(REGRESS)

e2e: shim/payments-shim-asan install-for-test
	regress/run-e2e

# Installs the extension as root or with sudo, unless the installed files are
# already these; otherwise says what to run.
INSTALLED_FILES = payments.so:$(pkglibdir)/payments.so payments.control:$(datadir)/extension/payments.control \
	$(foreach f,$(DATA),$(f):$(datadir)/extension/$(notdir $(f)))

install-for-test: all
	@same=yes; for pair in $(INSTALLED_FILES); do \
		cmp -s "$${pair%%:*}" "$(DESTDIR)$${pair#*:}" || same=no; \
	done; \
	if [ $$same = yes ]; then \
		echo "payments: the extension installed in $(pkglibdir) is up to date"; \
	elif [ -w "$(DESTDIR)$(datadir)/extension" ] && [ -w "$(DESTDIR)$(pkglibdir)" ]; then \
		$(MAKE) --no-print-directory install; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo $(MAKE) --no-print-directory install PG_CONFIG=$(PG_CONFIG); \
	else \
		echo "payments: cannot write to $(datadir)/extension; run 'sudo make install', then this command again" >&2; \
		exit 1; \
	fi

test: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory install-for-test
	$(MAKE) --no-print-directory installcheck
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory fuzz

# The reliability suite in full: crashes, shutdown and storms with the issue's numbers (make
# test runs them scaled down), the hostile inputs, 20,000 fuzzed events through the extension's
# JSON extraction (1,500 in make test), and the libFuzzer harnesses a minute each
reliability: deps
	$(MAKE) --no-print-directory all shim/payments-shim-asan
	$(MAKE) --no-print-directory install-for-test
	PAYMENTS_RELIABILITY=full PAYMENTS_FUZZ_EVENTS=20000 regress/run-e2e e2e/reliability.test.mjs \
		e2e/hostile_inputs.test.mjs e2e/extraction_fuzz.test.mjs
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=60

# libFuzzer harnesses (fuzz/README.md): the extension's parsers are built outside the
# server against fuzz/support.c, the shim's against stand-ins for libmicrohttpd's header
# calls.  Sections no harness reaches are dropped at link time (lld --gc-sections), so
# server functions they would call need not exist here.
FUZZ_CC = clang-14
FUZZ_HARNESSES = encoding form paynow stripe standard meta eversend hmac paypal paypal_cert \
	retry_after shim_headers shim_addr shim_http
FUZZ_BINS = $(patsubst %,fuzz/bin/fuzz_%,$(FUZZ_HARNESSES))
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-fsanitize-address-globals-dead-stripping -ffunction-sections -fdata-sections -Wall -Wextra -Werror
FUZZ_LDFLAGS = -fsanitize=fuzzer,address,undefined -fuse-ld=lld -Wl,--gc-sections
FUZZ_EXT_CFLAGS = $(FUZZ_CFLAGS) -Wno-unused-parameter -Wno-ignored-attributes \
	-Wno-missing-field-initializers -I$(includedir_server) -Iextension -Ifuzz
FUZZ_EXT_OBJS = $(patsubst %,fuzz/obj/%.o,support encoding verdict hmac form ed25519 kind_stripe kind_standard)
FUZZ_EXT_LIBS = -L$(pkglibdir) -lpgcommon -lpgport -lcrypto -lcurl -lz
FUZZ_SHIM_CFLAGS = $(FUZZ_CFLAGS) -std=gnu11 -Ishim -Ifuzz
FUZZ_SECONDS ?= 4

fuzz/obj/support.o: fuzz/support.c fuzz/support.h
	@mkdir -p fuzz/obj
	$(FUZZ_CC) $(FUZZ_EXT_CFLAGS) -c -o $@ $<
fuzz/obj/%.o: extension/%.c extension/payments.h
	@mkdir -p fuzz/obj
	$(FUZZ_CC) $(FUZZ_EXT_CFLAGS) -c -o $@ $<
fuzz/obj/shim_%.o: shim/%.c shim/shim.h
	@mkdir -p fuzz/obj
	$(FUZZ_CC) $(FUZZ_SHIM_CFLAGS) -c -o $@ $<
fuzz/obj/shim_support.o: fuzz/shim_support.c fuzz/shim_support.h shim/shim.h
	@mkdir -p fuzz/obj
	$(FUZZ_CC) $(FUZZ_SHIM_CFLAGS) -c -o $@ $<

fuzz/bin/fuzz_shim_headers: fuzz/fuzz_shim_headers.c fuzz/obj/shim_support.o fuzz/obj/shim_json.o
	@mkdir -p fuzz/bin
	$(FUZZ_CC) $(FUZZ_SHIM_CFLAGS) $(FUZZ_LDFLAGS) -o $@ $^
fuzz/bin/fuzz_shim_addr: fuzz/fuzz_shim_addr.c fuzz/obj/shim_support.o fuzz/obj/shim_json.o fuzz/obj/shim_addr.o
	@mkdir -p fuzz/bin
	$(FUZZ_CC) $(FUZZ_SHIM_CFLAGS) $(FUZZ_LDFLAGS) -o $@ $^
fuzz/bin/fuzz_shim_http: fuzz/fuzz_shim_http.c shim/http.c fuzz/obj/shim_support.o fuzz/obj/shim_json.o
	@mkdir -p fuzz/bin
	$(FUZZ_CC) $(FUZZ_SHIM_CFLAGS) $(FUZZ_LDFLAGS) -o $@ $< fuzz/obj/shim_support.o fuzz/obj/shim_json.o
# harnesses that include a kind's file, to reach its static parsers, depend on it
fuzz/bin/fuzz_meta: extension/kind_meta.c
fuzz/bin/fuzz_eversend: extension/kind_eversend.c
fuzz/bin/fuzz_hmac: extension/kind_hmac.c
fuzz/bin/fuzz_paypal: extension/kind_paypal.c
fuzz/bin/fuzz_paypal_cert: extension/paypal_certificates.c
fuzz/bin/fuzz_paynow: extension/kind_paynow.c
fuzz/bin/fuzz_retry_after: extension/outbox_send.c
fuzz/bin/fuzz_%: fuzz/fuzz_%.c fuzz/harness.h $(FUZZ_EXT_OBJS)
	@mkdir -p fuzz/bin
	$(FUZZ_CC) $(FUZZ_EXT_CFLAGS) $(FUZZ_LDFLAGS) -o $@ $< $(FUZZ_EXT_OBJS) $(FUZZ_EXT_LIBS)

fuzz-build: $(FUZZ_BINS)

# Replays the committed crash inputs, then fuzzes each harness FUZZ_SECONDS from its seeds
fuzz: fuzz-build
	fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

# Benchmarks: report queries on 1,000,000 generated payments
bench: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory install-for-test
	bench/throughput.sh
	bench/reports.sh

run:
	@scripts/install-deps.sh --build
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory install-for-test
	scripts/run.sh
