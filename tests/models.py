"""Hand-built MJCF models whose Jacobian structure is known on paper."""

TWO_PENDULUMS = """
<mujoco model="two_pendulums">
  <option timestep="0.01"/>
  <worldbody>
    <body name="p1">
      <joint name="h1" type="hinge" axis="0 1 0"/>
      <geom type="capsule" fromto="0 0 0 0 0 -0.5" size="0.05" contype="0" conaffinity="0"/>
    </body>
    <body name="p2" pos="1 0 0">
      <joint name="h2" type="hinge" axis="0 1 0"/>
      <geom type="capsule" fromto="0 0 0 0 0 -0.7" size="0.05" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="m1" joint="h1" ctrlrange="-1 1"/>
    <motor name="m2" joint="h2" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""

#: mass 2 kg, no gravity, no friction or damping: x' = x + n h v + h^2 u / m * n (n + 1) / 2.
FREE_SLIDER = """
<mujoco model="free_slider">
  <option timestep="0.01" gravity="0 0 0"/>
  <worldbody>
    <body name="block">
      <joint name="x" type="slide" axis="1 0 0"/>
      <geom type="box" size="0.1 0.1 0.1" mass="2" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator><motor name="push" joint="x" ctrlrange="-1 1"/></actuator>
</mujoco>
"""
SLIDER_MASS = 2.0
SLIDER_DT = 0.01

#: a cart on a rail with a pole: the cart's x position cannot influence anything but itself,
#: and its x velocity cannot influence the pole (Galilean invariance, no friction).
CART_POLE_CHAIN = """
<mujoco model="cart_pole_chain">
  <option timestep="0.01"/>
  <worldbody>
    <body name="cart">
      <joint name="rootx" type="slide" axis="1 0 0"/>
      <geom type="box" size="0.2 0.1 0.1" mass="1" contype="0" conaffinity="0"/>
      <body name="pole">
        <joint name="hinge" type="hinge" axis="0 1 0"/>
        <geom type="capsule" fromto="0 0 0 0 0 0.6" size="0.04" mass="0.3" contype="0" conaffinity="0"/>
      </body>
    </body>
  </worldbody>
  <actuator><motor name="push" joint="rootx" ctrlrange="-1 1"/></actuator>
</mujoco>
"""

#: an unstable stiff spring (explicit integration far beyond its stability limit): the state
#: overflows to inf and then NaN within ~100 steps.
DIVERGING_SPRING = """
<mujoco model="diverging_spring">
  <option timestep="0.1" gravity="0 0 0"/>
  <worldbody>
    <body name="mass">
      <joint name="x" type="slide" axis="1 0 0" stiffness="1e6"/>
      <geom type="box" size="0.1 0.1 0.1" mass="1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator><motor name="push" joint="x" ctrlrange="-1 1"/></actuator>
</mujoco>
"""

#: a ball pushed along x and z over a floor: random forces make it hop, so contacts come and go
#: and Jacobian entries (friction couples x to z only in contact) switch along trajectories.
BOUNCER = """
<mujoco model="bouncer">
  <option timestep="0.01"/>
  <worldbody>
    <geom name="floor" type="plane" size="5 5 0.1"/>
    <body name="ball" pos="0 0 0.1">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="z" type="slide" axis="0 0 1"/>
      <geom name="ball" type="sphere" size="0.1" mass="1"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="fx" joint="x" ctrlrange="-1 1" gear="5"/>
    <motor name="fz" joint="z" ctrlrange="-1 1" gear="20"/>
  </actuator>
</mujoco>
"""

#: a planar two-link arm with every constraint kind the Jacobian paths must handle: joint limits,
#: friction loss, damping, a tip that touches the floor (contact with friction), an equality-free
#: tendon-free tree, and a sensor (the fast path disables sensors; the state must not change).
LIMITED_ARM = """
<mujoco model="limited_arm">
  <option timestep="0.005"/>
  <worldbody>
    <geom name="floor" type="plane" size="2 2 0.1"/>
    <body name="upper" pos="0 0 0.3">
      <joint name="shoulder" type="hinge" axis="0 1 0" range="-100 100" damping="0.05"/>
      <geom name="upper" type="capsule" fromto="0 0 0 0.2 0 0" size="0.03" mass="0.5"/>
      <body name="lower" pos="0.2 0 0">
        <joint name="elbow" type="hinge" axis="0 1 0" range="-120 20" frictionloss="0.02"/>
        <geom name="lower" type="capsule" fromto="0 0 0 0.2 0 0" size="0.025" mass="0.3"/>
        <site name="tip" pos="0.2 0 0"/>
        <body name="slider" pos="0.1 0 0">
          <joint name="slide" type="slide" axis="1 0 0" range="-0.05 0.05" damping="1"/>
          <geom name="bob" type="sphere" size="0.05" mass="0.2"/>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="shoulder" joint="shoulder" ctrlrange="-1 1" gear="2"/>
    <motor name="elbow" joint="elbow" ctrlrange="-1 1" gear="1"/>
  </actuator>
  <sensor><framepos objtype="site" objname="tip"/><velocimeter site="tip"/></sensor>
</mujoco>
"""

#: a free sphere (isotropic inertia: no gyroscopic torque) in zero gravity, pushed and twisted by
#: two motors on its free joint; over one Euler step of h: v' = v + h u_f / m, x' = x + h v',
#: w' = w + h u_t / I (local frame), and the rotation read at the nominal next orientation moves
#: by R(h w')^T dr: d r'/d r = R(h w')^T.
FREE_SPHERE = """
<mujoco model="free_sphere">
  <option timestep="0.01" gravity="0 0 0"/>
  <worldbody>
    <body name="ball" pos="0 0 1">
      <freejoint name="root"/>
      <geom type="sphere" size="0.1" mass="2" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="push" joint="root" gear="0 0 1 0 0 0" ctrlrange="-1 1"/>
    <motor name="twist" joint="root" gear="0 0 0 1 0 0" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""
SPHERE_DT = 0.01

#: a small legged robot: a free-floating box torso with two hinge legs (hip and knee) ending in
#: sphere feet on a floor, under gravity; a ball-jointed tail; 3 substeps per control step. The
#: feet touch the floor at reset (contact-rich free-base dynamics without any download).
LEGGED = """
<mujoco model="legged">
  <option timestep="0.005"/>
  <default>
    <joint damping="0.05" limited="true" range="-1 1"/>
    <geom friction="0.8 0.02 0.01"/>
    <motor ctrlrange="-1 1" gear="5"/>
  </default>
  <worldbody>
    <geom name="floor" type="plane" size="5 5 0.1"/>
    <body name="torso" pos="0 0 0.455">
      <freejoint name="root"/>
      <geom name="torso" type="box" size="0.2 0.1 0.05" mass="2"/>
      <body name="front" pos="0.15 0 -0.05">
        <joint name="front_hip" type="hinge" axis="0 1 0"/>
        <geom type="capsule" fromto="0 0 0 0 0 -0.2" size="0.03" mass="0.2"/>
        <body pos="0 0 -0.2">
          <joint name="front_knee" type="hinge" axis="0 1 0"/>
          <geom type="capsule" fromto="0 0 0 0 0 -0.18" size="0.025" mass="0.1"/>
          <geom name="front_foot" type="sphere" pos="0 0 -0.18" size="0.03" mass="0.05"/>
        </body>
      </body>
      <body name="back" pos="-0.15 0 -0.05">
        <joint name="back_hip" type="hinge" axis="0 1 0"/>
        <geom type="capsule" fromto="0 0 0 0 0 -0.2" size="0.03" mass="0.2"/>
        <body pos="0 0 -0.2">
          <joint name="back_knee" type="hinge" axis="0 1 0"/>
          <geom type="capsule" fromto="0 0 0 0 0 -0.18" size="0.025" mass="0.1"/>
          <geom name="back_foot" type="sphere" pos="0 0 -0.18" size="0.03" mass="0.05"/>
        </body>
      </body>
      <body name="tail" pos="-0.2 0 0.05">
        <joint name="tail" type="ball" range="0 0.8" limited="true"/>
        <geom type="capsule" fromto="0 0 0 -0.15 0 0" size="0.015" mass="0.05" contype="0" conaffinity="0"/>
      </body>
    </body>
  </worldbody>
  <contact>
    <exclude body1="torso" body2="front"/>
    <exclude body1="torso" body2="back"/>
  </contact>
  <actuator>
    <motor name="front_hip" joint="front_hip"/>
    <motor name="front_knee" joint="front_knee"/>
    <motor name="back_hip" joint="back_hip"/>
    <motor name="back_knee" joint="back_knee"/>
  </actuator>
</mujoco>
"""
LEGGED_SUBSTEPS = 3

#: a wheel on a hinge held by joint friction loss (stiction), pushed by a torque below the friction
#: loss, no gravity: at steady state the (soft) friction-loss constraint is in its quadratic zone
#: and the solver's warm start is already its optimum, so the solver exits at its start point.
#: There the step is linear in (v, u) with a closed form (see tests/test_solve.py).
STICTION_HINGE = """
<mujoco model="stiction_hinge">
  <option timestep="0.01" gravity="0 0 0"/>
  <worldbody>
    <body name="wheel">
      <joint name="hinge" type="hinge" axis="0 0 1" frictionloss="1"/>
      <geom type="cylinder" size="0.2 0.05" mass="1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator><motor name="torque" joint="hinge" ctrlrange="-0.5 0.5"/></actuator>
</mujoco>
"""
STICTION_SUBSTEPS = 2

#: a box resting on a floor with friction (slide x, slide z, hinge about y), pushed sideways by a
#: force below the friction limit: four corner contacts active, at rest the solver's warm start
#: is its optimum.
RESTING_BOX = """
<mujoco model="resting_box">
  <option timestep="0.005"/>
  <worldbody>
    <geom name="floor" type="plane" size="2 2 0.1" friction="1 0.005 0.0001"/>
    <body name="box" pos="0 0 0.1">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="z" type="slide" axis="0 0 1"/>
      <joint name="ry" type="hinge" axis="0 1 0"/>
      <geom name="box" type="box" size="0.1 0.1 0.1" mass="1"/>
    </body>
  </worldbody>
  <actuator><motor name="push" joint="x" ctrlrange="-1 1" gear="2"/></actuator>
</mujoco>
"""
RESTING_BOX_SUBSTEPS = 2
