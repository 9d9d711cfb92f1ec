/* Preloaded in front of libfaketime by bench/faults.py (the clock fault): monotonic sleeps and timed
 * waits go straight to glibc, so that only the wall clock moves.
 *
 * Why: libfaketime 0.9.10 (Debian bookworm) with FAKETIME_DONT_FAKE_MONOTONIC=1 still rewrites the
 * deadlines of monotonic waits as if they were wall-clock ones (wolfcw/libfaketime#426, #503):
 *   - clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...) gets a negative deadline and fails with
 *     EINVAL, so every time.sleep() of Python >= 3.11 raises OSError;
 *   - pthread_cond_timedwait() on a CLOCK_MONOTONIC condition variable (gRPC, CPython's GIL) times
 *     out at once, so waiters spin.
 * Neither happens when a real clock is stepped; left alone they made the gateway under test fail in
 * ways no real clock jump can cause. Wall-clock (CLOCK_REALTIME) calls still go to libfaketime.
 *
 * Build: cc -O2 -shared -fPIC -o faketime_monotonic_fix.so faketime_monotonic_fix.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <time.h>

static void *libc(void) {
    static void *handle;
    if (!handle)
        handle = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    return handle;
}

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request, struct timespec *remain) {
    typedef int (*fn)(clockid_t, int, const struct timespec *, struct timespec *);
    static fn glibc, faked;
    if (clock != CLOCK_REALTIME) {
        if (!glibc)
            glibc = (fn)dlsym(libc(), "clock_nanosleep");
        return glibc(clock, flags, request, remain);
    }
    if (!faked)
        faked = (fn)dlsym(RTLD_NEXT, "clock_nanosleep");
    return faked(clock, flags, request, remain);
}

int pthread_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex, const struct timespec *deadline) {
    typedef int (*fn)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    static fn glibc, faked;
    /* glibc >= 2.25 keeps a condition variable's clock in bit 1 of __wrefs (nptl/pthread_cond_common.c). */
    if (__atomic_load_n(&cond->__data.__wrefs, __ATOMIC_RELAXED) & 2) {
        if (!glibc)
            glibc = (fn)dlvsym(libc(), "pthread_cond_timedwait", "GLIBC_2.3.2");
        return glibc(cond, mutex, deadline);
    }
    if (!faked)
        faked = (fn)dlvsym(RTLD_NEXT, "pthread_cond_timedwait", "GLIBC_2.3.2");
    return faked(cond, mutex, deadline);
}
