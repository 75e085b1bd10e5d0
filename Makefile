# payments: PGXS build of the extension, plus the HTTP shim.
#
#   make            build payments.so and shim/payments-shim
#   make install    install the extension into PostgreSQL 15
#   make installcheck   pg_regress on a temporary instance with pg_cron preloaded
#   make e2e        end-to-end tests: real cluster, real shim, official SDKs
#   make test       install what is missing, build, install, run every test
#   make run        the product, locally, in the foreground
#   make bench      benchmarks (webhook throughput vs pgbench, then report queries on generated data)
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

# JIT bitcode is of no use for this module and would need clang at build time.
override with_llvm = no

EXTRA_CLEAN = shim/payments-shim shim/payments-shim-asan regression.diffs regression.out results

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

.PHONY: deps test run installcheck e2e install-for-test bench

deps:
	@scripts/install-deps.sh

installcheck:
	regress/run-regress $(REGRESS)

e2e: shim/payments-shim-asan
	regress/run-e2e

# Installs the extension as root or with sudo, unless the installed files are
# already these; otherwise says what to run.
INSTALLED_FILES = payments.so:$(pkglibdir)/payments.so payments.control:$(datadir)/extension/payments.control \
	$(foreach f,$(DATA),$(f):$(datadir)/extension/$(notdir $(f)))

install-for-test:
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
		echo "payments: cannot write to $(datadir)/extension; run 'sudo make install', then 'make test' again" >&2; \
		exit 1; \
	fi

test: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory install-for-test
	$(MAKE) --no-print-directory installcheck
	$(MAKE) --no-print-directory e2e

# Benchmarks: report queries on 1,000,000 generated payments
bench: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory install-for-test
	bench/throughput.sh
	bench/reports.sh

run: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory install-for-test
	scripts/run.sh
