/*
 * fb-guestctl: the privileged guest operations Node.js has no API for, run by
 * the guest agent (as root, inside the VM) when the host (re)initialises the
 * sandbox, for example right after a snapshot restore:
 *
 *   fb-guestctl init <epoch-nanoseconds> <entropy-hex>
 *   fb-guestctl serve     (reads "init <ns> <hex>" lines on stdin, answers
 *                          "ok" or "error <message>" per line: the agent
 *                          starts it once, so an init costs no fork/exec)
 *
 * 1. credits the host's random bytes to the kernel pool (RNDADDENTROPY) and
 *    forces a CRNG reseed (RNDRESEEDCRNG), so clones of one snapshot stop
 *    sharing random state at once instead of at the next scheduled reseed;
 * 2. sets CLOCK_REALTIME to the host's wall clock.
 * Either argument may be "-" to skip that step. Exits non-zero with a message
 * on stderr when an operation fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENTROPY_BYTES 512

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int reseed(const char *hex) {
  size_t len = strlen(hex);
  if (len == 0 || len % 2 != 0 || len / 2 > MAX_ENTROPY_BYTES) {
    fprintf(stderr, "fb-guestctl: entropy must be 2..%d hex digits\n", MAX_ENTROPY_BYTES * 2);
    return 2;
  }
  struct {
    struct rand_pool_info info;
    unsigned char bytes[MAX_ENTROPY_BYTES];
  } req;
  memset(&req, 0, sizeof req);
  size_t n = len / 2;
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      fprintf(stderr, "fb-guestctl: entropy is not hex\n");
      return 2;
    }
    req.bytes[i] = (unsigned char)(hi << 4 | lo);
  }
  req.info.entropy_count = (int)(n * 8);
  req.info.buf_size = (int)n;
  memcpy(req.info.buf, req.bytes, n);
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "fb-guestctl: open /dev/urandom: %s\n", strerror(errno));
    return 1;
  }
  int rc = 0;
  if (ioctl(fd, RNDADDENTROPY, &req.info) != 0) {
    fprintf(stderr, "fb-guestctl: RNDADDENTROPY: %s\n", strerror(errno));
    rc = 1;
  } else if (ioctl(fd, RNDRESEEDCRNG) != 0) {
    fprintf(stderr, "fb-guestctl: RNDRESEEDCRNG: %s\n", strerror(errno));
    rc = 1;
  }
  close(fd);
  return rc;
}

static int settime(const char *ns) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(ns, &end, 10);
  if (errno != 0 || end == ns || *end != '\0') {
    fprintf(stderr, "fb-guestctl: clock must be epoch nanoseconds\n");
    return 2;
  }
  struct timespec ts = {.tv_sec = (time_t)(v / 1000000000ULL), .tv_nsec = (long)(v % 1000000000ULL)};
  if (clock_settime(CLOCK_REALTIME, &ts) != 0) {
    fprintf(stderr, "fb-guestctl: clock_settime: %s\n", strerror(errno));
    return 1;
  }
  return 0;
}

static int apply(const char *clock, const char *entropy) {
  int rc = 0;
  if (strcmp(entropy, "-") != 0) rc |= reseed(entropy);
  if (strcmp(clock, "-") != 0) rc |= settime(clock);
  return rc;
}

static int serve(void) {
  char line[4096];
  setvbuf(stdout, NULL, _IOLBF, 0);
  while (fgets(line, sizeof line, stdin) != NULL) {
    char *nl = strchr(line, '\n');
    if (nl == NULL) {
      printf("error line too long\n");
      int c;
      while ((c = getchar()) != EOF && c != '\n') {
      }
      continue;
    }
    *nl = '\0';
    char *save = NULL;
    char *verb = strtok_r(line, " ", &save);
    char *clock = strtok_r(NULL, " ", &save);
    char *entropy = strtok_r(NULL, " ", &save);
    if (verb == NULL || strcmp(verb, "init") != 0 || clock == NULL || entropy == NULL) {
      printf("error usage: init <epoch-ns|-> <entropy-hex|->\n");
      continue;
    }
    printf(apply(clock, entropy) == 0 ? "ok\n" : "error see the agent's stderr\n");
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "serve") == 0) return serve();
  if (argc != 4 || strcmp(argv[1], "init") != 0) {
    fprintf(stderr, "usage: fb-guestctl init <epoch-ns|-> <entropy-hex|->\n       fb-guestctl serve\n");
    return 2;
  }
  return apply(argv[2], argv[3]);
}
